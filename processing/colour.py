"""Colour correction: give an SR output the colours of its low-resolution input.

Diffusion SR keeps detail but can drift in colour. All methods take ``[B, C, H, W]`` float
images in [0, 1]; the reference (the LR input) may have a different size.

- ``wavelet`` (StableSR's wavelet colour fix): keep the output's high-frequency bands and take
  the low-frequency band from the reference, upsampled to the output size. The bands come from
  an a-trous decomposition with a dilated 3x3 binomial (Gaussian-like) blur.
- ``adain``: per-channel mean and standard deviation of the output set to the reference's.
- ``lab``: the same statistics matching in CIELAB (D65), so lightness and chroma move apart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .resample import antialiased_bicubic

COLOUR_METHODS = ("wavelet", "adain", "lab", "none")
WAVELET_LEVELS = 5
# Relative difference of the two scale factors (height, width) tolerated between output and reference.
ASPECT_TOLERANCE = 0.05

# sRGB (D65) -> CIE XYZ, IEC 61966-2-1.
_RGB_TO_XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                            [0.2126729, 0.7151522, 0.0721750],
                            [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)
_XYZ_TO_RGB = torch.linalg.inv(_RGB_TO_XYZ)
# White point as the image of RGB white, so white maps to exactly L=100, a=b=0.
_WHITE = _RGB_TO_XYZ.sum(dim=1)
_LAB_DELTA = 6.0 / 29.0


def _check_pair(output: torch.Tensor, reference: torch.Tensor) -> None:
    for name, image in (("output", output), ("reference", reference)):
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or not image.is_floating_point():
            raise ValueError(f"colour correction: {name} must be a float tensor [B, C, H, W] in [0, 1], got "
                             f"{getattr(image, 'shape', type(image).__name__)}; convert IMAGEs with bhwc_to_bchw")
    if output.shape[:2] != reference.shape[:2]:
        raise ValueError(f"colour correction: output {tuple(output.shape)} and reference {tuple(reference.shape)} "
                         f"must have the same batch size and channels; pass the LR image the output came from")
    scale_h = output.shape[-2] / reference.shape[-2]
    scale_w = output.shape[-1] / reference.shape[-1]
    if abs(scale_h - scale_w) > ASPECT_TOLERANCE * max(scale_h, scale_w):
        raise ValueError(f"colour correction: output {output.shape[-1]}x{output.shape[-2]} and reference "
                         f"{reference.shape[-1]}x{reference.shape[-2]} have different aspect ratios; "
                         f"pass the LR image the output came from")


def resize_to(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic resize of [B, C, H, W] (antialiased when shrinking)."""
    if image.shape[-2:] == (height, width):
        return image
    if height < image.shape[-2] or width < image.shape[-1]:
        return antialiased_bicubic(image, (height, width))
    return F.interpolate(image, size=(height, width), mode="bicubic", align_corners=False)


def wavelet_blur(image: torch.Tensor, dilation: int) -> torch.Tensor:
    """3x3 binomial blur [1 2 1]^T [1 2 1] / 16 with holes of ``dilation`` px (a-trous), edges replicated."""
    taps = torch.tensor([1.0, 2.0, 1.0], dtype=image.dtype, device=image.device) / 4
    kernel = (taps[:, None] * taps[None, :]).expand(image.shape[1], 1, 3, 3)
    padded = F.pad(image, (dilation,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=image.shape[1], dilation=dilation)


def wavelet_decompose(image: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) with ``high + low == image``: low is the image blurred at dilations 1, 2, ..., 2^(levels-1)."""
    low = image
    for level in range(levels):
        low = wavelet_blur(low, 2 ** level)
    return image - low, low


def match_mean_std(image: torch.Tensor, reference: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per image and channel, shift and scale ``image`` to the mean and (population) std of ``reference``."""
    mean, std = image.mean(dim=(-2, -1), keepdim=True), image.std(dim=(-2, -1), keepdim=True, correction=0)
    ref_mean = reference.mean(dim=(-2, -1), keepdim=True)
    ref_std = reference.std(dim=(-2, -1), keepdim=True, correction=0)
    return (image - mean) / std.clamp_min(eps) * ref_std + ref_mean


def _colour_matrix(matrix: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", matrix.to(image), image)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB [B, 3, H, W] in [0, 1] -> CIELAB (D65): L in [0, 100], a and b roughly in [-128, 128]."""
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb.clamp_min(0) + 0.055) / 1.055) ** 2.4)
    xyz = _colour_matrix(_RGB_TO_XYZ, linear) / _WHITE.to(rgb)[:, None, None]
    f = torch.where(xyz > _LAB_DELTA ** 3, xyz.clamp_min(0) ** (1 / 3), xyz / (3 * _LAB_DELTA ** 2) + 4 / 29)
    fx, fy, fz = f.unbind(dim=1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rgb_to_lab`` (not clamped: out-of-gamut colours leave [0, 1])."""
    lightness, a, b = lab.unbind(dim=1)
    fy = (lightness + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=1)
    xyz = torch.where(f > _LAB_DELTA, f ** 3, 3 * _LAB_DELTA ** 2 * (f - 4 / 29))
    linear = _colour_matrix(_XYZ_TO_RGB, xyz * _WHITE.to(lab)[:, None, None])
    return torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear.clamp_min(0) ** (1 / 2.4) - 0.055)


def colour_correct(output: torch.Tensor, reference: torch.Tensor, method: str = "wavelet",
                   levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """Colours of ``reference`` onto ``output`` ([B, C, H, W] in [0, 1]), clamped to [0, 1] ("none": output as is).

    ``method`` is one of COLOUR_METHODS; ``levels`` (wavelet only) sets how coarse the colour
    band is: the blur reaches about 2**levels output pixels.
    """
    if method not in COLOUR_METHODS:
        raise ValueError(f"colour correction method {method!r} is unknown; choose one of {', '.join(COLOUR_METHODS)}")
    _check_pair(output, reference)
    reference = reference.to(output)
    if method == "none":
        return output
    if method == "wavelet":
        if levels < 1:
            raise ValueError(f"wavelet levels must be >= 1, got {levels}")
        high, _ = wavelet_decompose(output, levels)
        _, reference_low = wavelet_decompose(resize_to(reference, *output.shape[-2:]), levels)
        corrected = high + reference_low
    elif method == "adain":
        corrected = match_mean_std(output, reference)
    else:
        if output.shape[1] != 3:
            raise ValueError(f"lab colour correction needs RGB images (3 channels), got {output.shape[1]}; "
                             f"use wavelet or adain")
        corrected = lab_to_rgb(match_mean_std(rgb_to_lab(output), rgb_to_lab(reference)))
    return corrected.clamp(0, 1)
