"""Pixel <-> latent nodes for SR: encode the upscaled LR image, decode and crop back, prompts."""

from __future__ import annotations

import dataclasses

import comfy.utils
import node_helpers
import torch

from ..processing import (bchw_to_bhwc, bhwc_to_bchw, check_image, colour_correct,
                          finish_image, prepare_image, split_alpha)
from ..samplers import DEFAULT_NEGATIVE_PROMPT, DEFAULT_POSITIVE_PROMPT
from .comfy_glue import empty_conditioning
from .inputs import COLOUR_METHOD, SCALE_BY, UPSCALE_METHOD, VAE_TILE_SIZE

CATEGORY = "OneStep SR"
SIZE_KEY = "onestep_sr_size"  # the PreparedImage (sans pixels) decode needs to undo the padding


def target_size(image: torch.Tensor, scale_by: float, width: int, height: int) -> tuple[int, int]:
    """(width, height) of the SR output: explicit when width/height > 0, else scale_by x the input."""
    if scale_by <= 0:
        raise ValueError(f"scale_by must be positive, got {scale_by}")
    in_h, in_w = image.shape[1:3]
    return (width or max(1, round(in_w * scale_by)), height or max(1, round(in_h * scale_by)))


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
        samples = vae.encode_tiled(pixels, tile_x=vae_tile, tile_y=vae_tile, overlap=64)
    else:
        samples = vae.encode(pixels)
    return {"samples": samples, SIZE_KEY: dataclasses.replace(prepared, pixels=None)}


def decode_sr(vae, latent: dict, vae_tile: int = 1024) -> torch.Tensor:
    """IMAGE from an SR LATENT, with the padding cropped off and the alpha re-attached."""
    samples = latent["samples"]
    stride = vae_stride(vae)
    if vae_tile and max(samples.shape[-2:]) * stride > vae_tile:
        tile = max(vae_tile // stride, 8)
        pixels = vae.decode_tiled(samples, tile_x=tile, tile_y=tile, overlap=max(64 // stride, 1))
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
    check_image(reference, "reference")
    colour, alpha = split_alpha(image)
    reference_colour, _ = split_alpha(reference)
    if reference_colour.shape[-1] != colour.shape[-1]:
        reference_colour = reference_colour.expand(*reference_colour.shape[:-1], colour.shape[-1])
    fixed = bchw_to_bhwc(colour_correct(bhwc_to_bchw(colour), bhwc_to_bchw(reference_colour), method))
    return fixed if alpha is None else torch.cat([fixed, alpha], dim=-1)


def with_lr_reference(conditioning, latent: dict):
    """Conditioning with the LR latent appended as reference latent (condition tokens), the way
    ComfyUI's ReferenceLatent node feeds models that read them (FLUX Kontext, Qwen-Image edit)."""
    return node_helpers.conditioning_set_values(conditioning, {"reference_latents": [latent["samples"]]},
                                                append=True)


class OneStepSRConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The low-resolution image (batches, greyscale and alpha are fine)."}),
            "vae": ("VAE", {"tooltip": "The VAE of the diffusion model."}),
            "scale_by": SCALE_BY,
            "width": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 1,
                              "tooltip": "Exact output width in pixels; 0 = input width x scale_by."}),
            "height": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 1,
                               "tooltip": "Exact output height in pixels; 0 = input height x scale_by."}),
            "upscale_method": UPSCALE_METHOD,
            "lr_as_reference": ("BOOLEAN", {"default": False,
                                            "tooltip": "Also append the LR latent to the conditioning as a "
                                                       "reference latent (for start mode 'noise' on models that "
                                                       "read reference latents)."}),
            "vae_tile_size": VAE_TILE_SIZE,
        }, "optional": {
            "positive": ("CONDITIONING", {"tooltip": "Positive conditioning to pass through (and extend); "
                                                     "left empty, an empty conditioning for text-free models."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative conditioning to pass through (and extend)."}),
        }}

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    FUNCTION = "condition"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Encodes the LR image, enlarged to the output size, into the latent the SR sampler starts "
                   "from; connect 'latent' to SamplerCustomAdvanced's latent_image.")

    def condition(self, image, vae, scale_by, width, height, upscale_method, lr_as_reference, vae_tile_size,
                  positive=None, negative=None):
        latent = encode_lr(vae, image, *target_size(image, scale_by, width, height), upscale_method, vae_tile_size)
        if positive is None:  # text-free models (the OneStep SR default model) still need a CONDITIONING
            positive, negative = empty_conditioning(), empty_conditioning(negative=True)
        if lr_as_reference:
            positive = None if positive is None else with_lr_reference(positive, latent)
            negative = None if negative is None else with_lr_reference(negative, latent)
        return (positive, negative, latent)


class OneStepSRDecode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "samples": ("LATENT", {"tooltip": "The sampled SR latent."}),
            "vae": ("VAE", {"tooltip": "The VAE that encoded the LR image."}),
            "vae_tile_size": VAE_TILE_SIZE,
        }}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "decode"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Decodes an SR latent and crops it to the exact output size, re-attaching alpha "
                   "(a stock VAE Decode would keep the stride padding).")

    def decode(self, samples, vae, vae_tile_size):
        return (decode_sr(vae, samples, vae_tile_size),)


class OneStepSRColourFix:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The SR output whose colours drifted."}),
            "reference": ("IMAGE", {"tooltip": "The LR input whose colours are right (any size, same aspect)."}),
            "method": COLOUR_METHOD,
        }}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "fix"
    CATEGORY = CATEGORY
    DESCRIPTION = "Colour correction: matches an SR output's colours to its LR input."

    def fix(self, image, reference, method):
        return (colour_fix_image(image, reference, method),)


class OneStepSRPrompts:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP", {"tooltip": "The text encoder of the diffusion model."}),
            "positive": ("STRING", {"multiline": True, "default": DEFAULT_POSITIVE_PROMPT,
                                    "tooltip": "What a good HR image looks like."}),
            "negative": ("STRING", {"multiline": True, "default": DEFAULT_NEGATIVE_PROMPT,
                                    "tooltip": "What SR should steer away from."}),
        }}

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "encode"
    CATEGORY = CATEGORY
    DESCRIPTION = "The default positive/negative SR prompts, encoded."

    def encode(self, clip, positive, negative):
        if clip is None:
            raise ValueError("OneStep SR Prompts: 'clip' is empty; this checkpoint has no text encoder — "
                             "load one with a CLIP loader node")
        return tuple(clip.encode_from_tokens_scheduled(clip.tokenize(text)) for text in (positive, negative))
