"""Pixels <-> latents for SR: the LR image enlarged and encoded, the SR latent decoded and cropped
back (ComfyUI's tiled VAE for big images), and the colour fix on IMAGEs."""

from __future__ import annotations

import dataclasses

import comfy.utils
import node_helpers
import torch

from ..processing.colour import colour_correct
from ..processing.images import (bchw_to_bhwc, bhwc_to_bchw, check_finite, check_image, finish_image, prepare_image,
                                 split_alpha)
from ..processing.tiling import check_output_fits

SIZE_KEY = "onestep_sr_size"  # the PreparedImage (sans pixels) decode needs to undo the padding
# Overlap of ComfyUI's tiled VAE passes in pixels, at most a quarter of the tile as in its VAE Decode (Tiled)
# node: those passes also cut tiles of half the side, which must be wider than the overlap.
VAE_OVERLAP_PX = 64


def target_size(image: torch.Tensor, scale_by: float, width: int, height: int) -> tuple[int, int]:
    """(width, height) of the SR output: explicit when width/height > 0, else scale_by x the input;
    refused (naming scale_by or width/height) when the output cannot fit in free memory."""
    if scale_by <= 0:
        raise ValueError(f"scale_by must be positive, got {scale_by}")
    check_image(image, "image")
    batch, in_h, in_w, channels = image.shape
    size = (width or max(1, round(in_w * scale_by)), height or max(1, round(in_h * scale_by)))
    what = f"width {width} x height {height}" if width and height else f"OneStep SR: scale_by {scale_by:g}"
    check_output_fits(batch, size[1], size[0], channels, what,
                      "lower scale_by (or width / height), upscale a crop of the image, or free memory")
    return size


def vae_stride(vae) -> int:
    ratio = vae.downscale_ratio
    if not isinstance(ratio, int):
        raise ValueError("OneStep SR needs an image VAE (one whose downscale ratio is a whole number); "
                         "video VAEs are not supported")
    return ratio


def encode_lr(vae, image: torch.Tensor, width: int, height: int, method: str = "bicubic",
              vae_tile: int = 1024) -> dict:
    """LATENT of the LR image upscaled to width x height, padded to the VAE's stride.

    The unpadded size and the upscaled alpha travel in the LATENT so `decode_sr` can undo both.
    """
    check_image(image, "image")
    upscaled = bchw_to_bhwc(comfy.utils.common_upscale(bhwc_to_bchw(image), width, height, method, "disabled"))
    stride = vae_stride(vae)
    prepared = prepare_image(upscaled.clamp(0, 1), multiple=stride, min_side=2 * stride,
                             name="image (after upscaling to the target size)")
    pixels = bchw_to_bhwc(prepared.pixels)
    if vae_tile and max(pixels.shape[1:3]) > vae_tile:
        samples = vae.encode_tiled(pixels, tile_x=vae_tile, tile_y=vae_tile, overlap=min(VAE_OVERLAP_PX, vae_tile // 4))
    else:
        samples = vae.encode(pixels)
    return {"samples": samples, SIZE_KEY: dataclasses.replace(prepared, pixels=None)}


def decode_sr(vae, latent: dict, vae_tile: int = 1024) -> torch.Tensor:
    """IMAGE from an SR LATENT, with the padding cropped off and the alpha re-attached."""
    samples = latent["samples"]
    check_finite(samples, "samples", "the sampler diverged: lower the guidance, or use fewer steps or another start mode")
    stride = vae_stride(vae)
    if vae_tile and max(samples.shape[-2:]) * stride > vae_tile:
        tile = max(vae_tile // stride, 8)
        overlap = max(min(VAE_OVERLAP_PX // stride, tile // 4), 1)
        pixels = vae.decode_tiled(samples, tile_x=tile, tile_y=tile, overlap=overlap)
    else:
        pixels = vae.decode(samples)
    if pixels.ndim == 5:  # VAEs that decode a time axis
        pixels = pixels.reshape(-1, *pixels.shape[-3:])
    prepared = latent.get(SIZE_KEY)
    if prepared is None:
        return pixels
    return finish_image(bhwc_to_bchw(pixels), prepared, scale=1)


def colour_fix_image(image: torch.Tensor, reference: torch.Tensor, method: str) -> torch.Tensor:
    """IMAGE `image` with the colours of IMAGE `reference` (any size, same aspect); alpha kept."""
    if method == "none":
        return image
    check_image(image, "image")
    check_image(reference, "reference")
    colour, alpha = split_alpha(image)
    reference_colour, _ = split_alpha(reference)
    if colour.shape[-1] == 1 and reference_colour.shape[-1] == 3:  # grey, as the pipeline averages RGB back
        reference_colour = reference_colour.mean(-1, keepdim=True)
    elif reference_colour.shape[-1] != colour.shape[-1]:
        reference_colour = reference_colour.expand(*reference_colour.shape[:-1], colour.shape[-1])
    fixed = bchw_to_bhwc(colour_correct(bhwc_to_bchw(colour), bhwc_to_bchw(reference_colour), method))
    return fixed if alpha is None else torch.cat([fixed, alpha], dim=-1)


def with_lr_reference(conditioning, latent: dict):
    """Conditioning with the LR latent appended as reference latent (condition tokens), the way
    ComfyUI's ReferenceLatent node feeds models that read them (FLUX Kontext, Qwen-Image edit)."""
    return node_helpers.conditioning_set_values(conditioning, {"reference_latents": [latent["samples"]]},
                                                append=True)
