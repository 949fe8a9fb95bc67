"""Every IMAGE ComfyUI can produce goes in, the right IMAGE comes out."""

import pytest
import torch
import torch.nn.functional as F

from onestep_sr.processing.images import (bchw_to_bhwc, bhwc_to_bchw, check_min_size, crop, finish_image,
                                          pad_to_multiple, prepare_image, split_alpha)


def fake_sr(pixels, scale=2):
    """Stands in for a network: nearest-neighbour upscale."""
    return F.interpolate(pixels, scale_factor=scale, mode="nearest")


def comfy_image(batch, height, width, channels, seed=0):
    return torch.rand(batch, height, width, channels, generator=torch.Generator().manual_seed(seed))


def test_layout_conversion():
    image = comfy_image(2, 5, 7, 3)
    bchw = bhwc_to_bchw(image)
    assert bchw.shape == (2, 3, 5, 7) and bchw[1, 2, 4, 6] == image[1, 4, 6, 2]
    assert torch.equal(bchw_to_bhwc(bchw), image)


def test_rgb_batch_padded_with_reflection_and_cropped_back():
    image = comfy_image(2, 30, 45, 3)
    prepared = prepare_image(image, multiple=8)
    assert prepared.pixels.shape == (2, 3, 32, 48) and prepared.alpha is None
    assert torch.equal(prepared.pixels[..., :30, :45], bhwc_to_bchw(image))
    assert torch.equal(prepared.pixels[..., 30, :45], bhwc_to_bchw(image)[..., 28, :])  # reflect
    assert torch.equal(prepared.pixels[..., :30, 45], bhwc_to_bchw(image)[..., :, 43])
    result = finish_image(fake_sr(prepared.pixels), prepared, 2)
    assert result.shape == (2, 60, 90, 3)
    assert torch.equal(result, bchw_to_bhwc(fake_sr(bhwc_to_bchw(image))))


def test_identity_round_trip_is_exact_for_odd_sizes():
    for height, width in [(17, 33), (9, 8), (64, 65)]:
        image = comfy_image(1, height, width, 3, seed=height)
        prepared = prepare_image(image, multiple=16)
        assert prepared.pixels.shape[-2] % 16 == 0 and prepared.pixels.shape[-1] % 16 == 0
        assert torch.equal(finish_image(prepared.pixels, prepared, 1), image)


def test_tiny_image_is_padded_by_replication():
    pixels = torch.arange(9.0).view(1, 1, 3, 3) / 9
    padded = pad_to_multiple(pixels, 8)
    assert padded.shape == (1, 1, 8, 8)
    assert torch.equal(padded[..., 7, 7], pixels[..., 2, 2])
    assert torch.equal(padded[..., 0, 3:], pixels[..., 0, 2:3].expand(1, 1, 5))
    assert torch.equal(crop(padded, 3, 3), pixels)
    assert pad_to_multiple(pixels, 1) is pixels


def test_greyscale_is_expanded_to_three_equal_channels():
    grey = comfy_image(3, 12, 10, 1)
    prepared = prepare_image(grey)
    assert prepared.pixels.shape == (3, 3, 12, 10) and prepared.pixels.is_contiguous()
    assert all(torch.equal(prepared.pixels[:, c], grey[..., 0]) for c in range(3))
    assert finish_image(fake_sr(prepared.pixels), prepared, 2).shape == (3, 24, 20, 3)


@pytest.mark.parametrize("channels", [4, 2])
def test_alpha_is_carried_through_and_upscaled_bicubically(channels):
    image = comfy_image(2, 20, 26, channels)
    image[..., -1] = 0.0
    image[:, :, 13:, -1] = 1.0  # a hard alpha edge
    prepared = prepare_image(image, multiple=8)
    assert torch.equal(prepared.alpha, bhwc_to_bchw(image[..., -1:]))
    assert prepared.pixels.shape == (2, 3, 24, 32)
    result = finish_image(fake_sr(prepared.pixels), prepared, 2)
    assert result.shape == (2, 40, 52, 4)
    expected_alpha = F.interpolate(bhwc_to_bchw(image[..., -1:]), size=(40, 52), mode="bicubic").clamp(0, 1)
    assert torch.allclose(result[..., 3], expected_alpha[:, 0])
    assert (result[:, :, :20, 3] == 0).all() and (result[:, :, 32:, 3] == 1).all()
    colour = image[..., :3] if channels == 4 else image[..., :1].expand(2, 20, 26, 3)
    assert torch.equal(result[..., :3], bchw_to_bhwc(fake_sr(bhwc_to_bchw(colour))))


def test_split_alpha():
    rgb, alpha = split_alpha(comfy_image(1, 4, 4, 4))
    assert rgb.shape[-1] == 3 and alpha.shape[-1] == 1
    rgb, alpha = split_alpha(comfy_image(1, 4, 4, 3))
    assert rgb.shape[-1] == 3 and alpha is None


@pytest.mark.parametrize("height,width", [(1, 1), (1, 500), (500, 1), (7, 64)])
def test_too_small_images_give_a_clear_error(height, width):
    with pytest.raises(ValueError, match=rf"image is {width}x{height} px .* at least 8x8 px\. Enlarge it first"):
        prepare_image(comfy_image(1, height, width, 3), multiple=8)


def test_min_size_boundary_and_custom_name():
    check_min_size(comfy_image(1, 8, 8, 3), 8)
    with pytest.raises(ValueError, match="low_res is 16x16 px .* at least 32x32"):
        prepare_image(comfy_image(1, 16, 16, 3), min_side=32, name="low_res")


def test_non_images_give_a_clear_error():
    with pytest.raises(ValueError, match="not a MASK or LATENT"):
        prepare_image(torch.rand(1, 64, 64))  # a MASK
    with pytest.raises(ValueError, match="1-4 channels"):
        prepare_image(torch.rand(1, 64, 64, 5))
    with pytest.raises(ValueError, match="float in"):
        prepare_image(torch.zeros(1, 64, 64, 3, dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        prepare_image([[0.0]])


def test_output_smaller_than_the_scale_says_is_rejected():
    prepared = prepare_image(comfy_image(1, 16, 16, 3))
    with pytest.raises(ValueError, match="check the scale matches the model"):
        finish_image(fake_sr(prepared.pixels, 2), prepared, 4)


def test_output_is_clamped_to_the_image_range():
    prepared = prepare_image(comfy_image(1, 16, 16, 3))
    result = finish_image(fake_sr(prepared.pixels) * 3 - 1, prepared, 2)
    assert result.min() == 0 and result.max() == 1
