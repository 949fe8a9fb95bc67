"""Shift-tolerant LPIPS (Ghildyal & Liu, ECCV 2022) from the `stlpips-pytorch` wheel, offline: a
perceptual distance for training (VGG backbone) and for benchmarks (AlexNet backbone, so that the
measure is not the loss). Training and benchmark code only: nothing at node run time loads it.

The wheel ships the complete weights (trunk and calibration layers) as `weights/vST0.0/*.pth`; they
are read with ``torch.load(weights_only=True)`` (tensors only, nothing unpickled), never through the
package's own loader, which unpickles freely. Its modules import IPython and torchsummary at import
time without using them; `_stlpips_module` gives those two names empty stand-ins while importing,
so neither needs installing.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

BACKBONES = ("vgg", "alex")
VARIANT = "shift_tolerant"
UNUSED_IMPORTS = {"IPython": "embed", "torchsummary": "summary"}  # module -> the name stlpips takes from it
# The smallest side each backbone takes: its shift-tolerant blur pools reflect-pad the deepest feature
# maps, which must stay wider than the pad (measured: VGG fails below 18 px, AlexNet below 21).
MIN_SIDE = {"vgg": 18, "alex": 21}


def _stlpips_module():
    """stlpips_pytorch.stlpips, imported with stand-ins for the modules it imports and never uses."""
    if importlib.util.find_spec("stlpips_pytorch") is None:
        raise ImportError("the perceptual loss needs the stlpips-pytorch wheel (ships its weights): "
                          "pip install 'onestep-sr[train]' or pip install stlpips-pytorch==0.0.2")
    stand_ins = {}
    for name, attribute in UNUSED_IMPORTS.items():
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            module = types.ModuleType(name)
            setattr(module, attribute, None)
            sys.modules[name] = stand_ins[name] = module
    try:
        from stlpips_pytorch import stlpips
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
    return stlpips


def weights_path(backbone: str) -> Path:
    """The wheel's weight file for `backbone`."""
    spec = importlib.util.find_spec("stlpips_pytorch")
    return Path(spec.submodule_search_locations[0]) / "weights" / "vST0.0" / f"{backbone}_{VARIANT}.pth"


@functools.cache
def st_lpips(backbone: str) -> nn.Module:
    """The frozen ST-LPIPS network of `backbone` ("vgg" or "alex"), eval mode, on the CPU (callers
    move it). Built once per process."""
    if backbone not in BACKBONES:
        raise ValueError(f"ST-LPIPS backbone must be one of {BACKBONES}, got {backbone!r}")
    network = _stlpips_module().LPIPS(net=backbone, variant=VARIANT, pretrained=False, verbose=False)
    state = torch.load(weights_path(backbone), map_location="cpu", weights_only=True)
    missing, unexpected = network.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.startswith("lins.")]  # `lins` lists the lin0..lin4 modules again
    if missing or unexpected:
        raise ValueError(f"{weights_path(backbone)} does not fit ST-LPIPS-{backbone}: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}; reinstall stlpips-pytorch==0.0.2")
    return network.eval().requires_grad_(False)


def perceptual_distance(a: torch.Tensor, b: torch.Tensor, backbone: str = "vgg") -> torch.Tensor:
    """Per-sample ST-LPIPS distance [B] between images in [-1, 1] ([B, 3, H, W]); differentiable in
    both inputs, the network itself frozen (and float32 whatever the autocast around it)."""
    network = st_lpips(backbone).to(a.device)
    short_side = min(a.shape[-2:])
    if short_side < MIN_SIDE[backbone]:
        # smaller windows (a 16 px training crop) are compared enlarged to the smallest side the network takes
        size = [round(side * MIN_SIDE[backbone] / short_side) for side in a.shape[-2:]]
        a, b = (F.interpolate(image.float(), size=size, mode="bicubic", align_corners=False) for image in (a, b))
    with torch.autocast(a.device.type, enabled=False):
        return network(a.float(), b.float()).flatten()


def check_window(samples: int, crop: int) -> None:
    """Refuses a `sampled_perceptual` window that would silently take another one (samples < 1 takes the
    whole batch; windows under 16 px are mostly the networks' padding)."""
    if samples < 1 or crop < 16:
        raise ValueError(f"the perceptual term needs perceptual_samples >= 1 and perceptual_crop >= 16, got "
                         f"{samples} and {crop}")


def sampled_perceptual(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator | None, samples: int,
                       crop: int, backbone: str = "vgg") -> torch.Tensor:
    """Mean ST-LPIPS of the last `samples` images of the batch on one random crop x crop window (the same
    window in a and b, drawn from `generator`): the perceptual term at a fraction of its full cost,
    ST-LPIPS-VGG being some 30 times the default SR network's."""
    a, b = a[-samples:], b[-samples:]
    height, width = a.shape[-2:]
    top = left = 0
    if crop < height or crop < width:
        device = generator.device if generator is not None else a.device
        top = int(torch.randint(0, max(1, height - crop + 1), (1,), generator=generator, device=device))
        left = int(torch.randint(0, max(1, width - crop + 1), (1,), generator=generator, device=device))
    window = (..., slice(top, top + crop), slice(left, left + crop))
    return perceptual_distance(a[window], b[window], backbone).mean()
