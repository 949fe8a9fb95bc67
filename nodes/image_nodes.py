"""Pixel <-> latent nodes for SR: encode the upscaled LR image, decode and crop back, colour fix, prompts."""

from __future__ import annotations

from ..bridge.latents import colour_fix_image, decode_sr, encode_lr, target_size, with_lr_reference
from ..bridge.sampling import empty_conditioning
from ..bridge.widgets import (COLOUR_METHOD, NEGATIVE_PROMPT, POSITIVE_PROMPT, SCALE_BY, UPSCALE_METHOD,
                              VAE_TILE_SIZE)

CATEGORY = "OneStep SR"


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
            "positive": POSITIVE_PROMPT,
            "negative": NEGATIVE_PROMPT,
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
