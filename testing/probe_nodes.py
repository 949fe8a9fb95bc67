"""Test-only ComfyUI nodes (a custom-node file the test servers load beside the extension, see
comfy_host.prepare_base_dir): IMAGEs and LATENTs no stock node makes (NaN, infinity, any channel count, empty),
and a probe of the server's peak memory for the load test. Stdlib and torch only: the users' venv loads it too.
"""

import resource

import torch

ODD_VALUES = {"none": None, "nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def odd_tensor(shape, value: str, count: int, seed: int) -> torch.Tensor:
    """Uniform [0, 1) values of `shape` with `count` of them (at seeded places) replaced by ODD_VALUES[value]."""
    generator = torch.Generator().manual_seed(seed)
    tensor = torch.rand(shape, generator=generator)
    if ODD_VALUES[value] is not None and tensor.numel():
        places = torch.randperm(tensor.numel(), generator=generator)[:count]
        tensor.view(-1)[places] = ODD_VALUES[value]
    return tensor


def size_inputs(channels_max: int) -> dict:
    """The widgets both odd-tensor nodes take: size, channels, which odd value and how many of them."""
    return {"width": ("INT", {"default": 16, "min": 0, "max": 4096}),
            "height": ("INT", {"default": 16, "min": 0, "max": 4096}),
            "channels": ("INT", {"default": 3, "min": 1, "max": channels_max}),
            "value": (list(ODD_VALUES), {"default": "nan"}),
            "count": ("INT", {"default": 1, "min": 0, "max": 1 << 20})}


class ProbeOddImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {**size_inputs(4), "batch": ("INT", {"default": 1, "min": 1, "max": 16}),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 1 << 30})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, width, height, channels, value, count, batch, seed):
        return (odd_tensor((batch, height, width, channels), value, count, seed),)


class ProbeOddLatent:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": size_inputs(128)}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, width, height, channels, value, count):
        return ({"samples": odd_tensor((1, channels, height, width), value, count, 0) * 2 - 1},)


class ProbePeakRSS:
    """Output node: the server process's peak resident memory so far (kB), in the prompt's /history entry."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    RETURN_TYPES = ()
    FUNCTION = "probe"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def probe(self, image):
        return {"ui": {"peak_rss_kb": [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss],
                       "shape": [list(image.shape)]}}


NODE_CLASS_MAPPINGS = {"ProbeOddImage": ProbeOddImage, "ProbeOddLatent": ProbeOddLatent,
                       "ProbePeakRSS": ProbePeakRSS}
