"""Large images with the default model (issue 5): seams, memory across runs, the one-click node's
pixel tiling in ComfyUI equal to the pure pipeline."""

import math
from pathlib import Path

import psutil
import pytest

from onestep_sr.models.flow_map_sr import load_model
from onestep_sr.models.pipeline import upscale
from onestep_sr.processing.tiling import tiled_apply
from onestep_sr.training.photos import held_out_image

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "onestep_sr_default.safetensors"


def psnr(a, b):
    return -10 * math.log10(float((a - b).square().mean()))


@pytest.fixture(scope="module")
def net():
    return load_model(str(WEIGHTS))


@pytest.fixture(scope="module")
def lr_256():
    """A 256 x 256 crop of a held-out photo as the input: its x4 output is 1024 x 1024."""
    return held_out_image("sklearn/china.jpg")[..., :256, :256].contiguous()


def test_tiled_1024_output_is_seamless(net, lr_256):
    whole = upscale(net, lr_256, 4)
    tiles = []
    tiled = tiled_apply(lr_256, lambda x: upscale(net, x, 4), scale=4, tile=96,
                        callback=lambda done, total: tiles.append(total))
    assert whole.shape == tiled.shape == (1, 3, 1024, 1024)
    assert tiles[-1] >= 9  # really tiled
    assert psnr(tiled, whole) >= 40.0


@pytest.mark.host
def test_one_click_node_tiles_the_default_model_like_the_pipeline(comfy_host, lr_256, net):
    load_default_model = comfy_host.module("bridge.default_model").load_default_model
    node_upscale = comfy_host.module("bridge.upscale").upscale
    model, vae = load_default_model(str(WEIGHTS))
    image = lr_256[:, :, :128, :160].permute(0, 2, 3, 1)

    def run(tile_size):
        return node_upscale(model=model, vae=vae, image=image, scale_by=4.0, steps=1, family="auto",
                            start_mode="lr", t_start=1.0, shift=1.0, gamma=0.0, bridge_scale=1.0, guidance=1.0,
                            seed=0, tile_size=tile_size)

    whole, tiled = run(0), run(384)
    reference = upscale(net, image.permute(0, 3, 1, 2), 4).permute(0, 2, 3, 1)
    assert whole.shape == (1, 512, 640, 3)
    assert (whole - reference).abs().max() <= 1e-4
    assert psnr(tiled, whole) >= 40.0

    process = psutil.Process()
    resident = []
    for _ in range(10):
        run(384)
        resident.append(process.memory_info().rss)
    assert resident[9] <= 1.05 * resident[1]  # memory does not grow from run to run
