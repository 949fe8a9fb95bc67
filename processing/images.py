"""Turning any ComfyUI IMAGE into what an SR network takes, and its output back into an IMAGE.

A ComfyUI IMAGE is ``[B, H, W, C]`` float in [0, 1] with C = 3 usually, 1 for greyscale and
4 for RGBA (2, grey + alpha, is accepted too). Networks take ``[B, 3, H, W]`` with H and W
multiples of their stride. ``prepare_image`` does the whole way in, ``finish_image`` the way
back: alpha is upscaled bicubically on its own and re-attached, padding is cropped off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

# Smallest side accepted by default: one 8 px VAE / pixel-unshuffle cell.
DEFAULT_MIN_SIDE = 8


def bhwc_to_bchw(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI layout [B, H, W, C] -> torch layout [B, C, H, W]."""
    return rearrange(image, "b h w c -> b c h w")


def bchw_to_bhwc(image: torch.Tensor) -> torch.Tensor:
    """Torch layout [B, C, H, W] -> ComfyUI layout [B, H, W, C]."""
    return rearrange(image, "b c h w -> b h w c")


def check_image(image, name: str = "image") -> None:
    """Raise a clear error unless ``image`` is a ComfyUI IMAGE tensor [B, H, W, C], C in 1..4."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (a ComfyUI IMAGE), got {type(image).__name__}")
    if image.ndim != 4 or not 1 <= image.shape[-1] <= 4:
        raise ValueError(
            f"{name} must be a ComfyUI IMAGE shaped [batch, height, width, channels] with 1-4 "
            f"channels, got shape {tuple(image.shape)}; connect an IMAGE output (not a MASK or LATENT)")
    if not image.is_floating_point():
        raise ValueError(f"{name} must be float in [0, 1], got dtype {image.dtype}; convert it with .float() / 255")
    if image.numel() == 0:
        raise ValueError(f"{name} is empty ({image.shape[2]}x{image.shape[1]} px, batch {image.shape[0]}); connect an "
                         "image with pixels")
    check_finite(image, name, "fix or replace the node that made it")


def check_finite(tensor: torch.Tensor, name: str, fix: str) -> None:
    """Raise a clear error, naming `name` and `fix`, when `tensor` holds NaN or infinite values (one
    would spread over the whole output)."""
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise ValueError(f"{name} holds {bad} NaN or infinite value{'s' if bad > 1 else ''}; {fix}")


def check_min_size(image_bhwc: torch.Tensor, min_side: int = DEFAULT_MIN_SIDE, name: str = "image") -> None:
    """Raise a clear error when either side of ``image_bhwc`` is below ``min_side`` pixels."""
    height, width = image_bhwc.shape[1:3]
    if min(height, width) < min_side:
        raise ValueError(
            f"{name} is {width}x{height} px (width x height); OneStep SR needs at least "
            f"{min_side}x{min_side} px. Enlarge it first (e.g. with an 'Upscale Image' / ImageScale "
            f"node) or crop a larger region")


def split_alpha(image_bhwc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Colour and alpha of an IMAGE: ([B,H,W,1 or 3], [B,H,W,1] or None). Alpha is the last of 2 or 4 channels."""
    if image_bhwc.shape[-1] in (2, 4):
        return image_bhwc[..., :-1], image_bhwc[..., -1:]
    return image_bhwc, None


def to_rgb(image_bhwc: torch.Tensor) -> torch.Tensor:
    """Greyscale [..., 1] expanded to 3 equal channels; RGB returned as is."""
    if image_bhwc.shape[-1] == 1:
        return image_bhwc.expand(*image_bhwc.shape[:-1], 3)
    if image_bhwc.shape[-1] != 3:
        raise ValueError(f"expected 1 or 3 colour channels, got {image_bhwc.shape[-1]}; split alpha off first")
    return image_bhwc


def pad_to_multiple(image_bchw: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right so H and W are multiples of ``multiple``.

    Reflect padding avoids a visible hard edge; it needs the pad to be smaller than the side, so
    tiny images fall back to replicate. Undo with ``crop(padded, height, width)``.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    height, width = image_bchw.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return image_bchw
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(image_bchw, (0, pad_w, 0, pad_h), mode=mode)


def crop(image_bchw: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Top-left ``height`` x ``width`` of a [B, C, H, W] tensor (undoes ``pad_to_multiple``)."""
    return image_bchw[..., :height, :width]


@dataclass(frozen=True)
class PreparedImage:
    """An IMAGE made ready for an SR network, plus what ``finish_image`` needs to undo it."""

    pixels: torch.Tensor  # [B, 3, H', W'] RGB, padded to the stride
    alpha: torch.Tensor | None  # [B, 1, H, W] or None
    height: int  # size before padding
    width: int


def prepare_image(image: torch.Tensor, multiple: int = 1, min_side: int = DEFAULT_MIN_SIDE,
                  name: str = "image") -> PreparedImage:
    """Validate a ComfyUI IMAGE, split off alpha, expand grey to RGB, go channels-first and pad."""
    check_image(image, name)
    check_min_size(image, min_side, name)
    colour, alpha = split_alpha(image)
    # contiguous: the grey expand is a view, and networks may work in place
    pixels = pad_to_multiple(bhwc_to_bchw(to_rgb(colour)), multiple).contiguous()
    return PreparedImage(pixels=pixels, alpha=None if alpha is None else bhwc_to_bchw(alpha),
                         height=image.shape[1], width=image.shape[2])


def finish_image(output_bchw: torch.Tensor, prepared: PreparedImage, scale: int) -> torch.Tensor:
    """Network output [B, 3, s*H', s*W'] -> IMAGE [B, s*H, s*W, 3 or 4] in [0, 1].

    The padding is cropped off and the alpha, upscaled bicubically to the same size, re-attached.
    """
    height, width = scale * prepared.height, scale * prepared.width
    if output_bchw.shape[-2] < height or output_bchw.shape[-1] < width:
        raise ValueError(
            f"SR output is {output_bchw.shape[-1]}x{output_bchw.shape[-2]} px but x{scale} of the "
            f"{prepared.width}x{prepared.height} input needs at least {width}x{height}; "
            f"check the scale matches the model")
    output = crop(output_bchw, height, width)
    if prepared.alpha is not None:
        alpha = F.interpolate(prepared.alpha.to(output), size=(height, width), mode="bicubic",
                              align_corners=False)
        output = torch.cat([output, alpha], dim=1)
    return bchw_to_bhwc(output.clamp(0, 1))
