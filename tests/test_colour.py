"""Colour correction: known colour shifts are undone, correct images are left alone, Lab is exact."""

import pytest
import torch
import torch.nn.functional as F

from onestep_sr.processing.colour import (COLOUR_METHODS, colour_correct, lab_to_rgb, match_mean_std, rgb_to_lab,
                                          resize_to, wavelet_decompose)

torch.set_num_threads(1)


def smooth_image(batch=1, size=32, low=0.25, high=0.75, seed=0):
    """A photo-like smooth image with values in [low, high]."""
    coarse = torch.rand(batch, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    image = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)
    return low + (high - low) * image


def upscale(image, scale=4):
    return F.interpolate(image, scale_factor=scale, mode="bicubic", align_corners=False)


OFFSET = torch.tensor([0.06, -0.05, 0.04]).view(1, 3, 1, 1)


def test_wavelet_removes_a_constant_offset_exactly():
    reference = smooth_image()
    output = upscale(reference) + OFFSET
    assert (output - upscale(reference)).abs().mean() > 0.04
    assert (colour_correct(output, reference, "wavelet") - upscale(reference)).abs().max() < 1e-5


def test_wavelet_keeps_the_outputs_fine_detail():
    """A period-2 checkerboard is pure high band: it survives while the offset goes."""
    reference = smooth_image(size=64)
    rows, cols = torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij")
    checker = 0.05 * (1 - 2 * ((rows + cols) % 2)).float()
    corrected = colour_correct(upscale(reference) + checker + OFFSET, reference, "wavelet")
    interior = (slice(None), slice(None), slice(64, -64), slice(64, -64))
    assert (corrected - upscale(reference) - checker)[interior].abs().max() < 1e-5


def test_wavelet_bands_add_up_and_low_band_of_a_constant_is_itself():
    image = torch.rand(2, 3, 40, 50)
    high, low = wavelet_decompose(image, levels=4)
    assert torch.allclose(high + low, image, atol=1e-6)
    flat = torch.full((1, 3, 20, 20), 0.3)
    assert torch.allclose(wavelet_decompose(flat)[1], flat, atol=1e-6)


def test_wavelet_mostly_undoes_a_gain():
    reference = smooth_image()
    target = upscale(reference)
    output = 0.8 * target
    before = (output - target).abs().mean()
    after = (colour_correct(output, reference, "wavelet") - target).abs().mean()
    assert before > 0.08 and after < 0.01


def test_adain_undoes_a_per_channel_affine_shift_exactly():
    reference = smooth_image(batch=2)
    gain, offset = torch.tensor([0.5, 0.7, 0.9]).view(1, 3, 1, 1), torch.tensor([0.3, 0.1, -0.05]).view(1, 3, 1, 1)
    output = reference * gain + offset
    assert torch.allclose(colour_correct(output, reference, "adain"), reference, atol=1e-5)


def test_adain_matches_mean_and_std_exactly():
    reference = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.6 + 0.2
    output = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 0.2 + 0.4
    corrected = colour_correct(output, reference, "adain")
    for stat in (lambda x: x.mean(dim=(2, 3)), lambda x: x.std(dim=(2, 3), correction=0)):
        assert torch.allclose(stat(corrected), stat(reference), atol=1e-5)


def test_adain_with_a_smaller_reference_undoes_a_shift():
    reference = smooth_image()
    corrected = colour_correct(upscale(reference) * 0.6 + 0.3, reference, "adain")
    assert (corrected - upscale(reference)).abs().mean() < 0.01


def test_lab_known_values():
    colours = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.5]]).view(1, 4, 3, 1)
    lab = rgb_to_lab(colours.permute(0, 2, 1, 3)).permute(0, 2, 1, 3).view(4, 3)
    expected = torch.tensor([[100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [53.2408, 80.0925, 67.2032], [53.3889, 0.0, 0.0]])
    assert torch.allclose(lab, expected, atol=2e-3)


def test_lab_agrees_with_scikit_image():
    skimage_color = pytest.importorskip("skimage.color")
    rgb = torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ours = rgb_to_lab(rgb)[0].permute(1, 2, 0).numpy()
    theirs = skimage_color.rgb2lab(rgb[0].permute(1, 2, 0).numpy())
    assert abs(ours - theirs).max() < 0.01  # the two use sRGB matrices rounded differently


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lab_round_trip(dtype):
    rgb = torch.rand(2, 3, 64, 64, dtype=dtype, generator=torch.Generator().manual_seed(4))
    rgb[0, :, 0, :4] = torch.tensor([0.0, 1.0, 0.001, 0.04045], dtype=dtype)  # the branch points
    assert (lab_to_rgb(rgb_to_lab(rgb)) - rgb).abs().max() < 1e-4


def test_lab_undoes_a_shift_in_lab():
    reference = smooth_image(low=0.35, high=0.65)
    shifted = lab_to_rgb(rgb_to_lab(reference) + torch.tensor([6.0, -4.0, 5.0]).view(1, 3, 1, 1))
    assert shifted.min() > 0 and shifted.max() < 1 and (shifted - reference).abs().mean() > 0.03
    assert (colour_correct(upscale(shifted), reference, "lab") - upscale(reference)).abs().mean() < 0.005
    assert torch.allclose(colour_correct(shifted, reference, "lab"), reference, atol=1e-4)


@pytest.mark.parametrize("method", COLOUR_METHODS)
def test_a_correct_image_is_left_unchanged(method):
    reference = smooth_image()
    assert torch.allclose(colour_correct(reference, reference, method), reference, atol=1e-4)
    output = upscale(reference)
    assert (colour_correct(output, reference, method) - output).abs().max() < 0.01


def test_each_image_of_a_batch_is_corrected_with_its_own_reference():
    reference = torch.cat([smooth_image(seed=5), smooth_image(seed=6)])
    offsets = torch.tensor([[0.05, 0.0, -0.05], [-0.06, 0.04, 0.0]]).view(2, 3, 1, 1)
    for method in ("wavelet", "adain"):
        corrected = colour_correct(upscale(reference) + offsets, reference, method)
        assert (corrected - upscale(reference)).abs().mean() < 0.005


def test_result_is_clamped_and_resize_to_is_bicubic():
    reference = smooth_image()
    assert colour_correct(upscale(reference) + 0.9, reference, "adain").max() <= 1
    assert torch.equal(resize_to(reference, 128, 128), upscale(reference))


def test_bad_inputs_give_clear_errors():
    image = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="'hsv' is unknown; choose one of wavelet, adain, lab, none"):
        colour_correct(image, image, "hsv")
    with pytest.raises(ValueError, match="same batch size and channels"):
        colour_correct(image, torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError, match="reference must be a float tensor"):
        colour_correct(image, torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="different aspect ratios"):
        colour_correct(image, torch.rand(1, 3, 8, 16))
    with pytest.raises(ValueError, match="lab colour correction needs RGB"):
        colour_correct(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 8, 8), "lab")


def test_match_mean_std_of_a_flat_image_is_the_reference_mean():
    reference = torch.rand(1, 3, 8, 8)
    matched = match_mean_std(torch.full((1, 3, 8, 8), 0.5), reference)
    assert torch.allclose(matched, reference.mean(dim=(2, 3), keepdim=True).expand_as(matched))
