"""Degradations of the default model's data: one bicubic definition, seeded real-world chain."""

import numpy as np
import pytest
import torch
from PIL import Image

from onestep_sr.models.degrade import (bicubic_downscale, bicubic_upscale, crop_to_multiple,
                                       realistic_downscale)


@pytest.mark.parametrize("scale", [4, 8])
def test_bicubic_of_a_constant_image_is_that_constant(scale):
    hr = torch.full((2, 3, 32, 40), 0.3)
    lr = bicubic_downscale(hr, scale)
    assert lr.shape == (2, 3, 32 // scale, 40 // scale)
    torch.testing.assert_close(lr, torch.full_like(lr, 0.3))
    up = bicubic_upscale(lr, scale)
    assert up.shape == hr.shape
    torch.testing.assert_close(up, hr)


@pytest.mark.parametrize("scale", [4, 8])
def test_bicubic_downscale_equals_pils_antialiased_bicubic(scale):
    # PIL's BICUBIC resize on a float image is the reference antialiased bicubic (as MATLAB's
    # imresize): the package's one definition must agree with it to float precision.
    rng = np.random.default_rng(0)
    image = rng.random((64, 48)).astype(np.float32)
    reference = np.asarray(Image.fromarray(image, mode="F").resize((48 // scale, 64 // scale),
                                                                   Image.Resampling.BICUBIC))
    ours = bicubic_downscale(torch.from_numpy(image)[None, None], scale)[0, 0].numpy()
    np.testing.assert_allclose(ours, np.clip(reference, 0, 1), atol=1e-6)


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
