"""Degradations of the default model's data: one bicubic definition, seeded real-world chain."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from onestep_sr.processing import resample
from onestep_sr.processing.resample import bicubic_downscale, bicubic_upscale, crop_to_multiple
from onestep_sr.training.degradations import realistic_downscale

MPS_MESSAGE = ("The operator 'aten::_upsample_bicubic2d_aa.out' is not currently implemented for the MPS device.")


@pytest.fixture(params=["native", "mps_fallback"])
def antialias(request, monkeypatch):
    """Each test twice: with torch's antialiased bicubic, and with it raising as on Apple's MPS (the
    fallback must then be taken, and give the same answers)."""
    refused = []
    if request.param == "mps_fallback":
        native = torch.nn.functional.interpolate

        def interpolate_without_aa(*args, antialias=False, **kwargs):
            if antialias:
                refused.append(True)
                raise NotImplementedError(MPS_MESSAGE)
            return native(*args, **kwargs)

        monkeypatch.setattr(torch.nn.functional, "interpolate", interpolate_without_aa)
    yield request.param
    assert bool(refused) == (request.param == "mps_fallback")


@pytest.mark.parametrize("scale", [4, 8])
def test_bicubic_of_a_constant_image_is_that_constant(scale, antialias):
    hr = torch.full((2, 3, 32, 40), 0.3)
    lr = bicubic_downscale(hr, scale)
    assert lr.shape == (2, 3, 32 // scale, 40 // scale)
    torch.testing.assert_close(lr, torch.full_like(lr, 0.3))
    up = bicubic_upscale(lr, scale)
    assert up.shape == hr.shape
    torch.testing.assert_close(up, hr)


@pytest.mark.parametrize("scale", [4, 8])
def test_bicubic_downscale_equals_pils_antialiased_bicubic(scale, antialias):
    # PIL's BICUBIC resize on a float image is the reference antialiased bicubic (as MATLAB's
    # imresize): the package's one definition must agree with it to float precision.
    rng = np.random.default_rng(0)
    image = rng.random((64, 48)).astype(np.float32)
    reference = np.asarray(Image.fromarray(image, mode="F").resize((48 // scale, 64 // scale),
                                                                   Image.Resampling.BICUBIC))
    ours = bicubic_downscale(torch.from_numpy(image)[None, None], scale)[0, 0].numpy()
    np.testing.assert_allclose(ours, np.clip(reference, 0, 1), atol=1e-6)


@pytest.mark.parametrize("source, target", [((37, 29), (13, 11)), ((20, 20), (40, 10)), ((64, 48), (16, 12))])
def test_the_mps_fallback_is_torchs_antialiased_bicubic(source, target):
    """Any sizes, shrinking and growing: the matrix form and torch's kernel agree to float64 rounding."""
    image = torch.rand(2, 3, *source, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    native = torch.nn.functional.interpolate(image, size=target, mode="bicubic", antialias=True)
    fallback = torch.einsum("oh,bchw,pw->bcop", resample.resampling_matrix(source[0], target[0]), image,
                            resample.resampling_matrix(source[1], target[1]))
    torch.testing.assert_close(fallback, native, atol=1e-12, rtol=0)


def test_the_colour_fixs_shrink_takes_the_fallback_too(antialias):
    from onestep_sr.processing.colour import resize_to

    image = torch.rand(1, 3, 40, 36, generator=torch.Generator().manual_seed(1))
    reference = Image.fromarray(image[0, 0].numpy(), mode="F").resize((9, 10), Image.Resampling.BICUBIC)
    np.testing.assert_allclose(resize_to(image, 10, 9)[0, 0].numpy(), np.asarray(reference), atol=1e-6)


def test_bicubic_downscale_refuses_sizes_that_do_not_align():
    with pytest.raises(ValueError, match="multiple of scale 4"):
        bicubic_downscale(torch.rand(1, 3, 30, 32), 4)
    with pytest.raises(ValueError, match="B, C, H, W"):
        bicubic_downscale(torch.rand(3, 32, 32), 4)
    assert crop_to_multiple(torch.rand(1, 3, 30, 37), 8).shape == (1, 3, 24, 32)


def test_realistic_chain_is_seeded_and_shaped():
    hr = torch.rand(2, 3, 64, 64)
    first = realistic_downscale(hr, 4, np.random.default_rng(7))
    again = realistic_downscale(hr, 4, np.random.default_rng(7))
    other = realistic_downscale(hr, 4, np.random.default_rng(8))
    assert first.shape == (2, 3, 16, 16)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.min() >= 0 and first.max() <= 1


def test_realistic_chain_degrades_more_than_bicubic():
    # Blur, noise and JPEG move the LR image away from the clean bicubic LR of the same photo.
    y, x = torch.meshgrid(torch.linspace(0, 6, 64), torch.linspace(0, 6, 64), indexing="ij")
    hr = (0.5 + 0.4 * torch.sin(x * 3) * torch.cos(y * 2)).expand(1, 3, 64, 64).contiguous()
    clean = bicubic_downscale(hr, 4)
    real = realistic_downscale(hr, 4, np.random.default_rng(0))
    assert (real - clean).abs().mean() > 0.01


def test_blur_kernels_are_normalised_and_have_their_known_shapes():
    from onestep_sr.training.degradations import KERNELS, blur_kernel

    for kind in KERNELS:
        kernel = blur_kernel(kind, 15, 2.0, 1.0, 0.4, 1.5)
        assert kernel.shape == (15, 15) and abs(float(kernel.sum()) - 1) < 1e-6
        assert torch.allclose(kernel, kernel.flip(0).flip(1), atol=1e-7)  # point-symmetric
    # isotropic Gaussian: the outer product of two 1-D Gaussians of the same sigma
    axis = torch.arange(15) - 7.0
    one_d = torch.exp(-axis ** 2 / (2 * 1.7 ** 2))
    expected = torch.outer(one_d, one_d) / torch.outer(one_d, one_d).sum()
    torch.testing.assert_close(blur_kernel("iso", 15, 1.7, 9.9, 1.0, 2.0), expected)
    # the generalised Gaussian at beta = 1 is the Gaussian
    torch.testing.assert_close(blur_kernel("generalized_aniso", 15, 2.0, 1.0, 0.4, 1.0),
                               blur_kernel("aniso", 15, 2.0, 1.0, 0.4, 0.0))


def test_sinc_kernel_is_a_low_pass_with_its_cutoff():
    from onestep_sr.training.degradations import sinc_kernel

    kernel = sinc_kernel(21, cutoff=math.pi / 2)
    assert abs(float(kernel.sum()) - 1) < 1e-6
    response = torch.fft.fft2(torch.nn.functional.pad(kernel, (0, 107, 0, 107))).abs()  # 128-point spectrum
    frequency = torch.fft.fftfreq(128) * 2 * math.pi
    radius = torch.sqrt(frequency[:, None] ** 2 + frequency[None, :] ** 2)
    assert response[radius < 0.3 * math.pi / 2].min() > 0.8  # passes well below the cutoff
    assert response[radius > 1.5 * math.pi / 2].max() < 0.2  # stops well above it


def test_each_image_of_a_batch_gets_its_own_degradation():
    hr = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)).expand(2, -1, -1, -1).contiguous()
    lr = realistic_downscale(hr, 4, np.random.default_rng(3))
    assert lr.shape == (2, 3, 16, 16) and not torch.equal(lr[0], lr[1])


def test_the_last_noise_and_jpeg_stay_at_the_lr_resolution():
    """A flat grey photo has nothing to lose to blur: what its LR carries is the chain's noise and JPEG,
    added at (or after) the LR size, so it is not averaged away by the downscale (at HR size,
    30/255 noise would shrink to a quarter per LR pixel at x4)."""
    hr = torch.full((1, 3, 128, 128), 0.5)
    deviation = [float((realistic_downscale(hr, 4, np.random.default_rng(seed)) - 0.5).std()) for seed in range(12)]
    assert np.median(deviation) > 2 / 255
    assert max(deviation) > 6 / 255
