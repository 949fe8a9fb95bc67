"""The default SR model: network contract, pipeline sizes / channels, and the shipped weights."""

from pathlib import Path

import pytest
import torch

from onestep_sr.files.tensors import read_metadata, save_tensors
from onestep_sr.models.flow_map_sr import CONFIG_KEY, FlowMapSRNet, load_model, save_model
from onestep_sr.models.pipeline import upscale
from onestep_sr.processing.resample import bicubic_downscale, bicubic_upscale
from onestep_sr.training.photos import HELD_OUT, held_out_image, TRAIN

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "onestep_sr_default.safetensors"
MANIFEST = WEIGHTS.with_suffix(".data.json")


def tiny_net(family="shortcut", condition=False):
    return FlowMapSRNet(width=16, blocks=2, family=family,
                        condition=condition).eval()


@pytest.fixture(scope="module")
def shipped():
    torch.manual_seed(0)
    return load_model(str(WEIGHTS))


def psnr(a, b):
    return float(10 * torch.log10(1 / (a - b).square().mean()))


@pytest.mark.parametrize("family", ["shortcut", "two_time"])
def test_network_keeps_any_size_and_reads_both_times(family):
    torch.manual_seed(0)
    net = tiny_net(family, condition=True)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)  # undo the zero init to see the inputs
    x, cond = torch.randn(2, 3, 37, 50), torch.randn(2, 3, 37, 50)
    t = torch.tensor([1.0, 0.5])
    with torch.no_grad():
        u = net(x, t, torch.zeros(2), cond)
        u_other_s = net(x, t, torch.tensor([0.5, 0.25]), cond)
        u_other_cond = net(x, t, torch.zeros(2), cond.flip(-1))
    assert u.shape == x.shape
    assert not torch.allclose(u, u_other_s)
    assert not torch.allclose(u, u_other_cond)
    with pytest.raises(ValueError, match="cond must be"):
        net(x, t, t, None)


def test_unconditioned_network_reads_the_lr_only_through_its_state():
    torch.manual_seed(0)
    net = tiny_net()
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    x, t, s = torch.randn(1, 3, 20, 24), torch.ones(1), torch.zeros(1)
    with torch.no_grad():
        assert torch.equal(net(x, t, s, None), net(x, t, s, torch.randn_like(x)))
        assert not torch.allclose(net(x, t, s, None), net(x.flip(-1), t, s, None))


def test_untrained_network_upscales_exactly_like_bicubic():
    # conv_out starts at zero: u = 0, so the pseudo-x0 is the start point, the bicubic upscale.
    image = torch.rand(1, 3, 9, 13)
    out = upscale(tiny_net(), image, 4, steps=2)
    torch.testing.assert_close(out, bicubic_upscale(image, 4))


def test_pipeline_handles_greyscale_and_alpha():
    net = tiny_net()
    grey = torch.rand(1, 1, 7, 11)
    out = upscale(net, grey, 8)
    assert out.shape == (1, 1, 56, 88)
    torch.testing.assert_close(out, bicubic_upscale(grey, 8))
    rgba = torch.rand(2, 4, 6, 5)
    out = upscale(net, rgba, 4)
    assert out.shape == (2, 4, 24, 20)
    torch.testing.assert_close(out[:, 3:], bicubic_upscale(rgba[:, 3:], 4))
    with pytest.raises(ValueError, match="C = 1"):
        upscale(net, torch.rand(1, 2, 8, 8), 4)
    with pytest.raises(ValueError, match="steps"):
        upscale(net, torch.rand(1, 3, 8, 8), 4, steps=0)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(1)
    net = tiny_net("two_time")
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    path = tmp_path / "m.safetensors"
    save_model(net, str(path), {"note": "x"})
    loaded = load_model(str(path))
    assert loaded.config == net.config and read_metadata(path)["note"] == "x"
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, torch.ones(1), torch.zeros(1), x), net(x, torch.ones(1), torch.zeros(1), x))


def test_weights_that_do_not_fit_their_config_are_refused_by_name(tmp_path):
    net = tiny_net("shortcut")
    state = {**net.state_dict(), "unet.mid_block.attentions.0.to_q.weight": torch.zeros(16, 16)}  # an older layout
    save_tensors(str(tmp_path / "old.safetensors"), state, {CONFIG_KEY: net.config})
    with pytest.raises(ValueError, match=r"unexpected tensors \['unet.mid_block.attentions.0.to_q.weight'\]"):
        load_model(str(tmp_path / "old.safetensors"))
    # same tensors, but a config from before the activation was a setting (those blocks used SiLU)
    old_config = {key: value for key, value in net.config.items() if key != "activation"}
    save_tensors(str(tmp_path / "silu.safetensors"), net.state_dict(), {CONFIG_KEY: old_config})
    with pytest.raises(ValueError, match="another version"):
        load_model(str(tmp_path / "silu.safetensors"))


def test_held_out_photos_never_enter_training():
    assert len(HELD_OUT) >= 6 and not set(HELD_OUT) & set(TRAIN)


def test_shipped_weights_are_small_safetensors_with_their_recipe():
    assert WEIGHTS.exists() and WEIGHTS.stat().st_size <= 20 * 2**20
    meta = read_metadata(WEIGHTS)
    assert meta["family"] == "shortcut" and meta["start_mode"] == "lr" and meta["scales"] == [4, 8]
    # the last stage of the recipe (MODEL.md): the trajectory endpoint objective plus a small ST-LPIPS term
    assert meta["objective"] == "perceptual" and "train_default.py" in meta["training_command"]
    assert CONFIG_KEY in meta
    import json
    assert json.loads(MANIFEST.read_text())["hash"] == meta["data_manifest_hash"]


@pytest.mark.parametrize("scale", [4, 8])
@pytest.mark.parametrize("steps", [1, 2])
def test_shipped_model_upscales_odd_sizes_to_the_exact_size(shipped, scale, steps):
    image = torch.rand(1, 3, 11, 7)
    out = upscale(shipped, image, scale, steps=steps)
    assert out.shape == (1, 3, 11 * scale, 7 * scale)
    assert out.min() >= 0 and out.max() <= 1
    assert upscale(shipped, torch.rand(1, 1, 5, 6), scale, steps=steps).shape == (1, 1, 5 * scale, 6 * scale)
    assert upscale(shipped, torch.rand(1, 4, 5, 6), scale, steps=steps).shape == (1, 4, 5 * scale, 6 * scale)


def test_shipped_model_beats_bicubic_on_a_held_out_photo(shipped):
    hr = held_out_image("skimage/chelsea.png")[..., 40:232, 100:292]  # 192x192: the cat's face
    for scale in (4, 8):
        lr = bicubic_downscale(hr, scale)
        one_step = psnr(upscale(shipped, lr, scale), hr)
        gain = one_step - psnr(bicubic_upscale(lr, scale), hr)
        # The shipped weights gain +0.06 dB (x4) and +0.65 dB (x8) on this fur (trained for real-world LR
        # too, they gain less on clean fur than the previous weights' +0.38 / +0.83; MODEL.md), and 4 steps
        # end +0.05 / -0.05 dB from 1 step; an untrained net gains exactly 0.
        assert gain > 0 and (scale == 4 or gain >= 0.4), f"1-step x{scale} gains only {gain:.2f} dB over bicubic"
        assert psnr(upscale(shipped, lr, scale, steps=4), hr) >= one_step - 0.2


def test_shipped_model_is_deterministic_for_a_seed(shipped):
    image = torch.rand(1, 3, 12, 12)
    first = upscale(shipped, image, 4, steps=2, gamma=0.5, seed=3)
    assert torch.equal(first, upscale(shipped, image, 4, steps=2, gamma=0.5, seed=3))
    assert not torch.equal(first, upscale(shipped, image, 4, steps=2, gamma=0.5, seed=4))


def test_bf16_upscale_matches_float32_on_a_held_out_photo(shipped):
    hr = held_out_image("skimage/chelsea.png")[..., 40:232, 100:292]
    lr = bicubic_downscale(hr, 4)
    exact = upscale(shipped, lr, 4)
    assert torch.equal(upscale(shipped, lr, 4, precision="fp32"), exact)
    fast = upscale(shipped, lr, 4, precision="bf16")
    assert fast.dtype == exact.dtype and not torch.equal(fast, exact)  # it did run in bf16
    # measured on the six held-out photos: max |difference| 0.0034 (x4), PSNR equal to 1e-4 dB
    assert (fast - exact).abs().max() < 0.02
    assert abs(psnr(fast, hr) - psnr(exact, hr)) < 0.01
    with pytest.raises(ValueError, match="precision must be one of"):
        upscale(shipped, lr, 4, precision="half")


def test_fp16_upscale_matches_float32_on_a_held_out_photo(shipped):
    """fp16 (the MPS and older-GPU precision) has a narrower range than bf16: nothing in the network may
    overflow it. Run here under the CPU's fp16 autocast, the same casts as on those devices."""
    hr = held_out_image("skimage/chelsea.png")[..., 40:232, 100:292]
    lr = bicubic_downscale(hr, 4)
    exact = upscale(shipped, lr, 4, precision="fp32")
    half = upscale(shipped, lr, 4, precision="fp16")
    assert half.isfinite().all() and not torch.equal(half, exact)  # it did run in fp16
    # fp16 keeps 11 significant bits (bf16: 8): closer to float32 than the bf16 bound above
    assert (half - exact).abs().max() < 0.005
    assert abs(psnr(half, hr) - psnr(exact, hr)) < 0.01
