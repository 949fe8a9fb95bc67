"""Bicubic resampling, one definition for the pipeline, the training data, the benchmarks and the tests.

Downscale: torch's antialiased bicubic (the same kernel MATLAB's ``imresize`` and PIL use when
shrinking); upscale: plain bicubic interpolation to the output size. The pipeline enlarges the
LR image with exactly the kernel the model was trained on.

Apple's MPS has no antialiased bicubic (``aten::_upsample_bicubic2d_aa`` raises NotImplementedError
there): `antialiased_bicubic` then computes the same resampling as two small matrix products, PIL's
definition written out (a cubic kernel with a = -0.5 stretched over the shrink factor, taps outside
the image dropped and each output's weights renormalised), which every device runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_image(image: torch.Tensor, name: str = "image") -> None:
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
    check_image(hr, "hr")
    height, width = hr.shape[-2:]
    if scale < 1 or height % scale or width % scale:
        raise ValueError(f"the HR size {height}x{width} must be a multiple of scale {scale}; "
                         "crop it first (e.g. with crop_to_multiple)")
    return antialiased_bicubic(hr, (height // scale, width // scale)).clamp(0.0, 1.0)


def bicubic_upscale(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """LR [B, C, h, w] -> [B, C, h*scale, w*scale] by plain bicubic interpolation, clamped to [0, 1]."""
    check_image(lr, "lr")
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    up = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)
    return up.clamp(0.0, 1.0)


def crop_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """The top-left part of `image` whose height and width are multiples of `multiple`."""
    height, width = image.shape[-2:]
    return image[..., : height - height % multiple, : width - width % multiple]


# PIL's and torch's antialiased bicubic: Keys' cubic with a = -0.5 (plain bicubic upsampling uses -0.75).
CUBIC_A = -0.5


def antialiased_bicubic(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, C, H, W] resized to size (h, w) by antialiased bicubic, on the device where `image` is:
    torch's own kernel, or where a device lacks it (MPS), `resampling_matrix` products."""
    try:
        return F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=True)
    except NotImplementedError:
        rows = resampling_matrix(image.shape[-2], size[0]).to(image.dtype).to(image.device)
        columns = resampling_matrix(image.shape[-1], size[1]).to(image.dtype).to(image.device)
        return torch.einsum("oh,bchw,pw->bcop", rows, image, columns)


def resampling_matrix(source: int, target: int) -> torch.Tensor:
    """[target, source] float64 weights of antialiased bicubic along one axis (PIL's definition):
    output i is centred at (i + 1/2) * source / target; when shrinking the kernel widens by that factor."""
    factor = source / target
    stretch = max(factor, 1.0)
    centre = (torch.arange(target, dtype=torch.float64) + 0.5) * factor
    distance = ((torch.arange(source, dtype=torch.float64)[None] + 0.5 - centre[:, None]) / stretch).abs()
    near = (CUBIC_A + 2) * distance ** 3 - (CUBIC_A + 3) * distance ** 2 + 1
    far = CUBIC_A * (distance ** 3 - 5 * distance ** 2 + 8 * distance - 4)
    weights = torch.where(distance < 1, near, torch.where(distance < 2, far, torch.zeros_like(distance)))
    return weights / weights.sum(1, keepdim=True)
