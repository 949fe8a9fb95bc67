"""The one-click "OneStep SR Upscale" node: the same functions the graph blocks call, in one node."""

from __future__ import annotations

import comfy.sample
import comfy.utils
import latent_preview

from ..samplers import START_MODES, sample_flow_map
from .comfy_glue import empty_conditioning, family_choice, ksampler, model_info
from .image_nodes import UPSCALE_METHODS, VAE_TILE_TIP, decode_sr, encode_lr, target_size
from .sampling_nodes import (BRIDGE_TIP, FAMILY_CHOICES, FAMILY_TIP, START_TIP, flow_map_guider,
                             flow_map_sigmas)


def upscale(model, vae, image, scale_by, steps, family, start_mode, t_start, shift, gamma, bridge_scale,
            guidance, seed, upscale_method="bicubic", vae_tile_size=1024, positive=None, negative=None):
    """Encode -> flow-map sampling -> decode, exactly as the graph form does it."""
    if positive is None and not model_info(model)["needs_text"]:
        positive = empty_conditioning()
    if positive is None:
        raise ValueError("OneStep SR Upscale: connect a 'positive' CONDITIONING (e.g. from 'OneStep SR "
                         "Prompts' or CLIP Text Encode); diffusion models need their text conditioning")
    latent = encode_lr(vae, image, *target_size(image, scale_by, 0, 0), upscale_method, vae_tile_size)
    sigmas = flow_map_sigmas(model, steps, t_start, shift)
    sampler = ksampler(sample_flow_map, start_mode, bridge_scale, family=family_choice(family), gamma=gamma)
    guider = flow_map_guider(model, positive, negative, guidance)
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(samples, seed)
    callback = latent_preview.prepare_callback(model, steps)
    out = guider.sample(noise, samples, sampler, sigmas, callback=callback,
                        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    return decode_sr(vae, {**latent, "samples": out.to(samples.device)}, vae_tile_size)


class OneStepSRUpscale:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The SR model: a diffusion model with an SR adapter/LoRA."}),
            "vae": ("VAE", {"tooltip": "The model's VAE."}),
            "image": ("IMAGE", {"tooltip": "The low-resolution image."}),
            "scale_by": ("FLOAT", {"default": 4.0, "min": 1.0, "max": 16.0, "step": 0.5,
                                   "tooltip": "Upscale factor (x2, x4, x8 ...)."}),
            "steps": ("INT", {"default": 1, "min": 1, "max": 1000,
                              "tooltip": "Network evaluations: 1 = one-step SR; more = any-step."}),
            "family": (FAMILY_CHOICES, {"default": "auto", "tooltip": FAMILY_TIP}),
            "start_mode": (list(START_MODES), {"default": "lr", "tooltip": START_TIP}),
            "t_start": ("FLOAT", {"default": 1.0, "min": 0.001, "max": 1.0, "step": 0.001,
                                  "tooltip": "Start time of the schedule (1 for lr/noise, T for lr_at_T)."}),
            "shift": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 100.0, "step": 0.01,
                                "tooltip": "FLUX/SD3 time shift of the schedule."}),
            "gamma": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                "tooltip": "0 = deterministic; 1 = consistency-style re-noising."}),
            "bridge_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip": BRIDGE_TIP}),
            "guidance": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 30.0, "step": 0.05,
                                   "tooltip": "Positive/negative guidance weight; 1 = off (one evaluation per step)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "Seed for the start noise (start modes noise, noised_lr, bridge; gamma > 0)."}),
            "upscale_method": (UPSCALE_METHODS, {"default": "bicubic", "tooltip": "How the LR image is enlarged."}),
            "vae_tile_size": ("INT", {"default": 1024, "min": 0, "max": 8192, "step": 64, "tooltip": VAE_TILE_TIP}),
        }, "optional": {
            "positive": ("CONDITIONING", {"tooltip": "Positive SR prompt (required by text-conditioned models)."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative SR prompt (needed when guidance != 1)."}),
        }}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "OneStep SR"
    DESCRIPTION = "One-click one-step / any-step diffusion super-resolution."

    def upscale(self, **kwargs):
        return (upscale(**kwargs),)
