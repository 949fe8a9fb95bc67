"""Node inputs at the edges of what the widgets allow, and inputs no widget can stop (issue 15), in a real
ComfyUI in-process: every one either gives the right IMAGE or an error naming the input and the fix."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from onestep_sr.cli import DEFAULT_MODEL
from onestep_sr.testing import tiny_models

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def ext(comfy_host):
    return {name: comfy_host.module(f"bridge.{name}")
            for name in ("upscale", "latents", "default_model", "training_runs", "tiling")
            if name != "tiling"} | {"tiling": comfy_host.module("processing.tiling"),
                                    "loaders": comfy_host.module("nodes.loader_nodes")}


@pytest.fixture(scope="module")
def default_model(ext):
    return ext["default_model"].load_default_model(str(DEFAULT_MODEL))


def lr_image(height=40, width=48, channels=3, seed=0):
    return torch.rand(1, height, width, channels, generator=torch.Generator().manual_seed(seed))


def one_click(ext, model, vae, image, **overrides):
    args = dict(model=model, vae=vae, image=image, scale_by=2.0, steps=1, family="auto", start_mode="lr", t_start=1.0,
                shift=1.0, gamma=0.0, bridge_scale=1.0, guidance=1.0, seed=0)
    args.update(overrides)
    with torch.inference_mode():  # as ComfyUI runs nodes
        return ext["upscale"].upscale(**args)


@pytest.mark.parametrize("vae_tile_size", [64, 128])
def test_the_smallest_vae_tiles_work_and_equal_the_untiled_result(ext, default_model, vae_tile_size):
    """The default model's VAE is the identity on pixels, so ComfyUI's tiled VAE must give the untiled
    result (known answer); the tiny SD3 VAE (stride 8) must run and keep the size."""
    model, vae = default_model
    image = lr_image(80, 96)  # 160 x 192 out: tiled at both sizes
    tiled = one_click(ext, model, vae, image, vae_tile_size=vae_tile_size)
    untiled = one_click(ext, model, vae, image, vae_tile_size=0)
    assert tiled.shape == (1, 160, 192, 3) and torch.allclose(tiled, untiled, atol=1e-5)
    sd3 = tiny_models.build_model("sd3")
    out = one_click(ext, sd3, tiny_models.build_vae(16), image, vae_tile_size=vae_tile_size,
                    positive=tiny_models.conditioning("sd3"))
    assert out.shape == (1, 160, 192, 3) and torch.isfinite(out).all()


def test_the_largest_seed_with_gamma_samples(ext, default_model):
    model, vae = default_model
    for gamma_model, positive in ((model, None), (tiny_models.build_model("sd3"), tiny_models.conditioning("sd3"))):
        out = one_click(ext, gamma_model, vae if positive is None else tiny_models.build_vae(16), lr_image(),
                        steps=2, gamma=0.5, seed=2 ** 64 - 1, positive=positive)
        assert out.shape == (1, 80, 96, 3) and torch.isfinite(out).all()


def test_colour_fix_of_a_grey_image_takes_the_grey_of_an_rgb_reference(ext):
    image = torch.rand(1, 16, 16, 1, generator=torch.Generator().manual_seed(0))
    reference = torch.tensor([0.2, 0.4, 0.6]).expand(1, 4, 4, 3)
    fixed = ext["latents"].colour_fix_image(image, reference, "adain")
    assert fixed.shape == (1, 16, 16, 1)
    assert torch.allclose(fixed, torch.full_like(fixed, 0.4), atol=1e-4)  # the reference's grey, its std 0
    with_alpha = ext["latents"].colour_fix_image(torch.cat([image, torch.ones_like(image)], -1), reference, "adain")
    assert with_alpha.shape == (1, 16, 16, 2) and torch.equal(with_alpha[..., 1:], torch.ones_like(image))


@pytest.mark.parametrize("node_input", ["image", "reference"])
def test_non_finite_images_are_refused_by_input_name(ext, default_model, node_input):
    model, vae = default_model
    bad = lr_image()
    bad[0, 3, 4, 1] = float("nan")
    bad[0, 5, 6, 0] = float("inf")
    good = lr_image(seed=1)
    with pytest.raises(ValueError, match=rf"{node_input} holds 2 NaN or infinite values"):
        if node_input == "image":
            one_click(ext, model, vae, bad)
        else:
            ext["latents"].colour_fix_image(good, bad, "wavelet")


def test_a_non_finite_latent_is_refused_by_the_decoder(ext, default_model):
    _, vae = default_model
    latent = ext["latents"].encode_lr(vae, lr_image(), 96, 80)
    latent["samples"] = latent["samples"].clone()
    latent["samples"][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="samples holds 1 NaN or infinite value"):
        ext["latents"].decode_sr(vae, latent)


def test_an_output_too_large_for_memory_is_refused_naming_scale_by(ext, default_model, monkeypatch):
    model, vae = default_model
    monkeypatch.setattr(ext["tiling"], "free_memory", lambda device: 10 ** 8)  # 100 MB free
    with pytest.raises(ValueError, match=r"scale_by 16 makes a 4096x4096 output, which needs at least 805 MB of "
                                         r"memory; 100 MB is free"):
        one_click(ext, model, vae, torch.zeros(1, 256, 256, 3), scale_by=16.0)
    with pytest.raises(ValueError, match=r"width 8192 x height 8192 makes a 8192x8192 output \(batch 2\)"):
        ext["latents"].target_size(torch.zeros(2, 8, 8, 3), 4.0, 8192, 8192)


def test_a_renamed_pickle_is_refused_by_the_model_loader(ext, comfy_host):
    folder = comfy_host.base / "models" / "onestep_sr"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": torch.zeros(2)}, folder / "pickled.safetensors")
    comfy_host.folder_paths.filename_list_cache.clear()
    try:
        with pytest.raises(ValueError, match=r"pickled\.safetensors is not a safetensors file.*renamed pickle"):
            ext["loaders"].OneStepSRLoadModel().load("pickled.safetensors")
    finally:
        (folder / "pickled.safetensors").unlink()


# ---------------------------------------------------------------- Train SR LoRA's images


def train(ext, model, vae, **overrides):
    args = dict(lora_name="node_inputs", steps=2, batch_size=2, crop_size=32, scale=4, rank=2, learning_rate=1e-3,
                adversarial_weight=0.05, discriminator="patch", seed=0, overwrite=True)
    args.update(overrides)
    with torch.inference_mode():
        return ext["training_runs"].train_sr_lora(model, vae, **args)


def test_hr_images_smaller_than_the_crop_are_named_before_training(ext, default_model, comfy_host, tmp_path):
    model, vae = default_model
    folder = comfy_host.base / "input" / "small_hr"
    folder.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((40, 64, 3), np.uint8)).save(folder / "wide.png")
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(folder / "big.png")
    with pytest.raises(ValueError, match=r"2 HR image\(s\) are smaller than crop_size 48: the IMAGE batch \(48x40\), "
                                         r"wide\.png \(64x40\); lower crop_size to 40 or leave them out"):
        train(ext, model, vae, images=lr_image(), folder="small_hr", crop_size=48, lora_name="never_trained")
    assert not (comfy_host.base / "output" / "onestep_sr_training" / "never_trained").exists()


def test_a_grey_image_batch_trains(ext, default_model):
    model, vae = default_model
    _, _, report = train(ext, model, vae, images=lr_image(channels=1))
    assert "(2 steps" in report


@pytest.mark.parametrize("folder", ["../models", "/etc", "{input}/../output"])
def test_folders_outside_the_input_folder_are_refused(ext, default_model, comfy_host, folder):
    model, vae = default_model
    folder = folder.format(input=comfy_host.base / "input")
    with pytest.raises(ValueError, match=r"folder .* is outside ComfyUI's input folder"):
        train(ext, model, vae, folder=folder, lora_name="outside")


def test_a_folder_inside_the_input_folder_may_be_absolute_or_relative(ext, default_model, comfy_host):
    model, vae = default_model
    folder = comfy_host.base / "input" / "hr_photos"
    folder.mkdir(exist_ok=True)
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(folder / "a.png")
    for name in ("hr_photos", str(folder), f"{folder}/../hr_photos"):
        _, _, report = train(ext, model, vae, folder=name)
        assert "(2 steps" in report and os.path.exists(comfy_host.base / "models" / "loras" / "node_inputs.safetensors")


def test_an_empty_image_is_refused_by_name(ext, default_model):
    model, vae = default_model
    with pytest.raises(ValueError, match=r"image is empty \(0x8 px, batch 1\); connect an image with pixels"):
        one_click(ext, model, vae, torch.zeros(1, 8, 0, 3))
