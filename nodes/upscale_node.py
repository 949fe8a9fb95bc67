"""The one-click upscale nodes (bridge/upscale.py does the work): "OneStep SR Upscale", the inputs a user of the
default model or an SR LoRA needs, and "OneStep SR Upscale (advanced)", every input. The advanced node keeps the
class id OneStepSR_Upscale and its widget order, so workflows saved before the split load and run unchanged."""

from __future__ import annotations

from ..bridge.upscale import upscale
from ..bridge.widgets import (BRIDGE_SCALE, COLOUR_METHOD, FAMILY, GAMMA, GUIDANCE, REALISM, SCALE_BY, SHIFT,
                              START_MODE, STEPS, T_START, TILE_OVERLAP, TILE_SIZE, UPSCALE_METHOD, VAE_TILE_SIZE,
                              widget_defaults)

MODEL = ("MODEL", {"tooltip": "The SR model: the OneStep SR default model, or a diffusion model with an SR "
                              "adapter/LoRA."})
VAE = ("VAE", {"tooltip": "The model's VAE."})
IMAGE = ("IMAGE", {"tooltip": "The low-resolution image."})
POSITIVE = ("CONDITIONING", {"tooltip": "Positive SR prompt (required by text-conditioned models)."})
HIDDEN = {"unique_id": "UNIQUE_ID"}  # the node's id in the prompt: its progress text goes there


class OneStepSRUpscaleAdvanced:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": MODEL,
            "vae": VAE,
            "image": IMAGE,
            "scale_by": SCALE_BY,
            "steps": STEPS,
            "family": FAMILY,
            "start_mode": START_MODE,
            "t_start": T_START,
            "shift": SHIFT,
            "gamma": GAMMA,
            "bridge_scale": BRIDGE_SCALE,
            "guidance": GUIDANCE,
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "Seed for the start noise (start modes noise, noised_lr, bridge; gamma > 0)."}),
            "upscale_method": UPSCALE_METHOD,
            "tile_size": TILE_SIZE,
            "vae_tile_size": VAE_TILE_SIZE,
            "colour_fix": (COLOUR_METHOD[0], {**COLOUR_METHOD[1], "default": "none"}),
        }, "optional": {
            "positive": POSITIVE,
            "negative": ("CONDITIONING", {"tooltip": "Negative SR prompt (needed when guidance != 1)."}),
            "tile_overlap": TILE_OVERLAP,
            "realism": REALISM,
        }, "hidden": HIDDEN}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "upscale"
    CATEGORY = "OneStep SR"
    DESCRIPTION = ("One-click one-step / any-step diffusion super-resolution with every setting: the sampler "
                   "family, start mode and time, shift, re-noising, guidance, LR enlargement, VAE tiling, colour fix.")

    def upscale(self, unique_id=None, **kwargs):
        return (upscale(**kwargs, node_id=unique_id),)


class OneStepSRUpscale:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": MODEL,
            "vae": VAE,
            "image": IMAGE,
            "scale_by": SCALE_BY,
            "steps": STEPS,
            "realism": REALISM,
            "tile_size": TILE_SIZE,
        }, "optional": {
            "positive": POSITIVE,
        }, "hidden": HIDDEN}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "upscale"
    CATEGORY = "OneStep SR"
    DESCRIPTION = ("One-click super-resolution with the OneStep SR default model or a model with an SR LoRA: "
                   "'OneStep SR Upscale (advanced)' with its other settings at their defaults (start from the LR "
                   "image, no guidance, no colour fix).")

    def upscale(self, model, vae, image, scale_by, steps, realism, tile_size, positive=None, unique_id=None):
        settings = {**widget_defaults(OneStepSRUpscaleAdvanced.INPUT_TYPES()), "scale_by": scale_by, "steps": steps,
                    "realism": realism, "tile_size": tile_size}
        return (upscale(model=model, vae=vae, image=image, positive=positive, node_id=unique_id, **settings),)
