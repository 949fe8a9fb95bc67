"""The device paths on a CUDA GPU: the CLI, the pipeline, the one-click node on the default model and on tiny
FLUX / SD3 models in fp16 and bf16, and tiling. Skipped without a GPU (tests/conftest.py says why);
scripts/gpu_check.sh runs them with the in-process ComfyUI host on the GPU (ONESTEP_SR_HOST_DEVICE=cuda).

Every answer on the GPU is compared with the float32 CPU answer of the same code, which the CPU tests pin down;
the bounds are those of the precision: bf16 keeps 8 significant bits, fp16 11.
"""

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from onestep_sr.cli import DEFAULT_MODEL, main
from onestep_sr.files.images import read_image
from onestep_sr.models.flow_map_sr import load_model
from onestep_sr.models.pipeline import upscale
from onestep_sr.testing import tiny_models
from onestep_sr.training.photos import held_out_image

pytestmark = pytest.mark.cuda

# max |GPU - CPU float32| over [0, 1] images, per precision (measured on the CPU: bf16 0.0034, fp16 0.0005);
# float32 convolutions on a GPU run in TF32 by default (torch's cudnn.allow_tf32, ComfyUI's ops: 10 mantissa bits
# as fp16), so float32 gets fp16's bound
BOUNDS = {"fp32": 0.005, "bf16": 0.02, "fp16": 0.005}


@pytest.fixture(scope="module")
def photo():
    """A 48x64 crop of a held-out photo, [1, 3, H, W]."""
    return held_out_image("skimage/chelsea.png")[..., 60:108, 120:184].contiguous()


@pytest.fixture(scope="module")
def shipped():
    return load_model(str(DEFAULT_MODEL))


@pytest.fixture
def gpu_host(comfy_host):
    import comfy.model_management

    if comfy.model_management.get_torch_device().type != "cuda":
        pytest.skip("the in-process ComfyUI host runs on the CPU in this run; scripts/gpu_check.sh sets "
                    "ONESTEP_SR_HOST_DEVICE=cuda for the cuda tests")
    yield comfy_host
    comfy.model_management.unload_all_models()


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_the_cli_on_cuda_writes_the_cpus_upscale(tmp_path, photo, shipped, precision):
    source = tmp_path / "photo.png"
    Image.fromarray((photo[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(source)
    assert main(["upscale", str(source), "-o", str(tmp_path / "out.png"), "--device", "cuda",
                 "--precision", precision]) == 0
    expected = upscale(shipped, read_image(source), 4)[0].permute(1, 2, 0).numpy()
    written = np.asarray(Image.open(tmp_path / "out.png")).astype(np.float32) / 255
    assert np.abs(written - expected).max() <= BOUNDS[precision] + 1 / 255  # + the PNG's 8-bit rounding


@pytest.mark.parametrize("guidance, steps, gamma", [(1.0, 1, 0.0), (2.0, 2, 0.5)])
def test_the_pipeline_on_cuda_is_the_cpus(photo, shipped, guidance, steps, gamma):
    """Guided, stochastic, many steps: every tensor the pipeline makes must land on the state's device."""
    on_cpu = upscale(shipped, photo, 4, steps=steps, guidance=guidance, gamma=gamma, seed=3)
    on_gpu = upscale(copy.deepcopy(shipped).to("cuda"), photo, 4, steps=steps, guidance=guidance, gamma=gamma, seed=3)
    assert on_gpu.device.type == "cpu"  # returned where the image came from
    assert (on_gpu - on_cpu).abs().max() <= BOUNDS["fp32"]


def _one_click(comfy_host, model, vae, image, tile_size=0, **overrides):
    return comfy_host.module("bridge.upscale").upscale(
        model=model, vae=vae, image=image, scale_by=4.0, steps=1, family="auto", start_mode="lr", t_start=1.0,
        shift=1.0, gamma=0.0, bridge_scale=1.0, guidance=1.0, seed=0, tile_size=tile_size, **overrides)


@pytest.mark.parametrize("flag", [None, "fp16_unet", "bf16_unet"])
def test_the_one_click_node_runs_the_default_model_on_cuda(gpu_host, monkeypatch, photo, shipped, flag):
    """ComfyUI's own choice of weight dtype (bf16 where the GPU has it), or the one its flag asks for, computed
    natively on an Ampere or later GPU (no manual cast); tiled or not, the CPU's float32 upscale within that
    precision."""
    import comfy.cli_args

    if flag is not None:
        monkeypatch.setattr(comfy.cli_args.args, flag, True)
    model, vae = gpu_host.module("bridge.default_model").load_default_model(str(DEFAULT_MODEL))
    dtype = model.model.get_dtype()
    # ComfyUI's own choice: bf16 from compute capability 8 (Ampere) on, fp16 before
    expected_dtype = {"fp16_unet": torch.float16, "bf16_unet": torch.bfloat16}.get(
        flag, torch.bfloat16 if torch.cuda.get_device_capability()[0] >= 8 else torch.float16)
    assert dtype == expected_dtype
    if torch.cuda.get_device_capability()[0] >= 8:  # computes fp16 and bf16 natively: no manual cast
        assert model.model.manual_cast_dtype is None
    image = photo.permute(0, 2, 3, 1)
    reference = upscale(shipped, photo, 4).permute(0, 2, 3, 1)
    bound = BOUNDS["bf16" if dtype == torch.bfloat16 else "fp16"]
    whole = _one_click(gpu_host, model, vae, image)
    tiled = _one_click(gpu_host, model, vae, image, tile_size=128)  # 2 x 2 tiles of the 192 x 256 output
    assert (whole - reference).abs().max() <= bound
    assert (tiled - reference).abs().max() <= bound + 0.02  # + the blend of the seams (CPU: PSNR >= 40 dB)


@pytest.mark.parametrize("family", ["flux", "sd3"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_one_click_node_runs_tiny_native_models_on_cuda(gpu_host, family, dtype):
    """A tiny FLUX / SD3 model with half-precision weights on the GPU samples what its float32 weights
    sample, within that precision (random tiny networks: a loose bound of 0.1 on [0, 1] images)."""
    vae = tiny_models.build_vae(tiny_models.FAMILIES[family]["latent_channels"])
    positive = tiny_models.conditioning(family, seed=1)
    image = torch.rand(1, 32, 48, 3, generator=torch.Generator().manual_seed(0))
    outputs = {}
    for weights in (torch.float32, dtype):
        model = tiny_models.build_model(family, weights)
        assert model.model.get_dtype() == weights and model.load_device.type == "cuda"
        outputs[weights] = _one_click(gpu_host, model, vae, image, positive=positive)
    half = outputs[dtype]
    assert half.shape == (1, 128, 192, 3) and half.isfinite().all()
    assert (half - outputs[torch.float32]).abs().max() <= 0.1
