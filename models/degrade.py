"""Degradations that make LR training / evaluation pairs: pure, seeded, one definition.

Bicubic: torch's antialiased bicubic downscale (the same kernel MATLAB's ``imresize`` and
PIL use when shrinking), and plain bicubic upscaling back to the output size. The training
script, the benchmark, the tests and the pipeline all call these two functions, so the model
is evaluated on exactly the degradation it was trained on.

Real-world chain (Real-ESRGAN's second-order model, simplified): twice [Gaussian blur ->
random resize -> Gaussian noise -> JPEG], then the final bicubic downscale to the LR size.
Every random choice comes from a ``numpy.random.Generator`` the caller seeds.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SCALES = (4, 8)


def _check_image(image: torch.Tensor, name: str = "image") -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise ValueError(f"{name} must be a float tensor [B, C, H, W]; got "
                         f"{type(image).__name__} with shape {getattr(image, 'shape', None)}")
    if not image.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [0, 1]; got dtype {image.dtype} "
                         "(divide uint8 images by 255 first)")


def bicubic_downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """HR [B, C, H, W] in [0, 1] -> LR [B, C, H/scale, W/scale] (antialiased bicubic, clamped).

    H and W must be multiples of `scale` so that LR and HR pixels align exactly.
    """
    _check_image(hr, "hr")
    height, width = hr.shape[-2:]
    if scale < 1 or height % scale or width % scale:
        raise ValueError(f"the HR size {height}x{width} must be a multiple of scale {scale}; "
                         "crop it first (e.g. with crop_to_multiple)")
    lr = F.interpolate(hr, size=(height // scale, width // scale), mode="bicubic",
                       align_corners=False, antialias=True)
    return lr.clamp(0.0, 1.0)


def bicubic_upscale(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """LR [B, C, h, w] -> [B, C, h*scale, w*scale] by plain bicubic interpolation, clamped to [0, 1]."""
    _check_image(lr, "lr")
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    up = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)
    return up.clamp(0.0, 1.0)


def crop_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """The top-left part of `image` whose height and width are multiples of `multiple`."""
    height, width = image.shape[-2:]
    return image[..., : height - height % multiple, : width - width % multiple]


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    coords = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-coords**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = image.shape[1]
    padded = F.pad(image, (radius, radius, radius, radius), mode="reflect")
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    return F.conv2d(F.conv2d(padded, horizontal, groups=channels), vertical, groups=channels)


def _jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip through PIL of each image of the batch (values quantised to 8 bits)."""
    out = []
    for one in image:
        array = (one.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(
            buffer, format="JPEG", quality=int(quality))
        decoded = np.asarray(Image.open(buffer)).astype(np.float32) / 255
        decoded = decoded[..., None] if decoded.ndim == 2 else decoded
        out.append(torch.from_numpy(decoded).permute(2, 0, 1))
    return torch.stack(out).to(image.dtype)


def _one_order(image: torch.Tensor, rng: np.random.Generator, max_sigma: float,
               max_noise: float, min_quality: int) -> torch.Tensor:
    image = _gaussian_blur(image, float(rng.uniform(0.2, max_sigma)))
    size = image.shape[-2:]
    factor = float(rng.uniform(0.5, 1.5))
    resized = (max(4, round(size[0] * factor)), max(4, round(size[1] * factor)))
    mode = ("bilinear", "bicubic", "area")[int(rng.integers(3))]
    image = F.interpolate(image, size=resized, mode=mode,
                          **({} if mode == "area" else {"align_corners": False}))
    noise = torch.from_numpy(rng.standard_normal(image.shape).astype(np.float32))
    image = (image + float(rng.uniform(0.0, max_noise)) * noise).clamp(0, 1)
    return _jpeg(image, int(rng.integers(min_quality, 96)))


def realistic_downscale(hr: torch.Tensor, scale: int, rng: np.random.Generator) -> torch.Tensor:
    """HR [B, C, H, W] in [0, 1] -> LR [B, C, H/scale, W/scale] through a seeded second-order
    chain (blur, resize, noise, JPEG, twice; the second order milder), then the bicubic
    downscale to the LR size. Same generator state -> same output."""
    _check_image(hr, "hr")
    height, width = hr.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(f"the HR size {height}x{width} must be a multiple of scale {scale}")
    image = _one_order(hr, rng, max_sigma=2.0, max_noise=0.04, min_quality=40)
    image = _one_order(image, rng, max_sigma=1.2, max_noise=0.02, min_quality=60)
    lr = F.interpolate(image, size=(height // scale, width // scale), mode="bicubic",
                       align_corners=False, antialias=True)
    return lr.clamp(0.0, 1.0)
