"""The one-click "OneStep SR Upscale" node: the same functions the graph blocks call, in one node,
with latent tiling (progress and cancel per tile, tile halved on out-of-memory) and colour fix."""

from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.utils
import latent_preview
import torch

from ..models.pipeline import sample_sr
from ..processing import MIN_OVERLAP_PX, auto_tile_size, default_overlap, tiled_apply
from ..samplers import sample_flow_map, start_uses_noise
from .comfy_glue import empty_conditioning, family_choice, ksampler, model_info
from .default_model_node import direct_network
from .image_nodes import colour_fix_image, decode_sr, encode_lr, target_size, vae_stride
from .inputs import (BRIDGE_SCALE, COLOUR_METHOD, FAMILY, GAMMA, GUIDANCE, SCALE_BY, SHIFT, START_MODE, STEPS,
                     T_START, UPSCALE_METHOD, VAE_TILE_SIZE)
from .sampling_nodes import flow_map_guider, flow_map_sigmas

# Latent side used to ask ComfyUI's model for its memory estimate per latent cell.
PROBE_SIDE = 64


def auto_latent_tile(model, latent: torch.Tensor) -> int:
    """Tile side in latent cells that fits the sampling in free memory (ComfyUI's own estimate)."""
    probe = [2 * latent.shape[0], *latent.shape[1:-2], PROBE_SIDE, PROBE_SIDE]  # x2: guidance batch
    per_cell = model.model.memory_required(probe) / PROBE_SIDE ** 2
    return auto_tile_size(per_cell, model.load_device, multiple=8, min_tile=16)


def sample_tiled(sample, model, latent: torch.Tensor, noise: torch.Tensor | None, tile: int, overlap: int,
                 steps: int) -> torch.Tensor:
    """`sample(lr_tile, noise_tile or None, preview)` tile by tile over the SR latent (one tile
    when it fits); the noise is drawn for the whole latent first so the result does not depend
    on the tiling. `preview(step, x0, x, steps)` (ComfyUI's sampler callback) previews and
    advances the progress bar when there is one tile (else None: the bar counts tiles)."""
    channels = latent.shape[1]
    single = tile >= max(latent.shape[-2:])
    bar = comfy.utils.ProgressBar(steps)
    preview = latent_preview.prepare_callback(model, steps) if single else None

    def sample_tile(stacked: torch.Tensor) -> torch.Tensor:
        lr, tile_noise = stacked.split(channels, dim=1) if noise is not None else (stacked, None)
        return sample(lr, tile_noise, preview).to(lr)

    def tile_done(done: int, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if not single:
            bar.update_absolute(done, total)

    stacked = latent if noise is None else torch.cat([latent, noise.to(latent)], dim=1)
    return tiled_apply(stacked, sample_tile, scale=1, tile=tile, overlap=overlap, callback=tile_done)


def upscale(model, vae, image, scale_by, steps, family, start_mode, t_start, shift, gamma, bridge_scale,
            guidance, seed, upscale_method="bicubic", tile_size=0, vae_tile_size=1024, colour_fix="none",
            positive=None, negative=None, tile_overlap=0):
    """Encode -> flow-map sampling (tiled) -> decode -> colour fix, as the graph form does it."""
    info = model_info(model)
    if positive is None and info["needs_text"]:
        raise ValueError("OneStep SR Upscale: connect a 'positive' CONDITIONING (e.g. from 'OneStep SR "
                         "Prompts' or CLIP Text Encode); diffusion models need their text conditioning")
    latent = encode_lr(vae, image, *target_size(image, scale_by, 0, 0), upscale_method, vae_tile_size)
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    # the LR start modes read no noise (unless the model was trained with noise on its source)
    uses_noise = start_uses_noise(start_mode, info["source_noise"])
    noise = comfy.sample.prepare_noise(samples, seed) if uses_noise else None
    stride = vae_stride(vae)
    overlap = -(-tile_overlap // stride) if tile_overlap else default_overlap(1, stride)
    if tile_size and tile_size < 2 * overlap * stride:
        raise ValueError(f"OneStep SR Upscale: tile_size {tile_size} px is below the smallest tile, "
                         f"{2 * overlap * stride} px (tiles overlap by {overlap * stride} px); raise it, lower tile_overlap "
                "or use 0 (auto)")
    tile = tile_size // stride if tile_size else auto_latent_tile(model, samples)
    net = (direct_network(model) if positive is None and not uses_noise and start_mode == "lr" and t_start == 1.0
           and family_choice(family) in (None, *info["families"]) else None)
    if net is not None:  # the default model, unhooked: its pure pipeline, the same evaluations
        param = next(net.parameters())

        def sample(lr, _, preview):
            callback = None if preview is None else lambda d: preview(d["i"], d["denoised"], d["x"], steps)
            return sample_sr(net, lr.to(device=param.device, dtype=param.dtype), steps, gamma, seed, shift,
                             guidance, callback)
    else:
        if positive is None:
            positive, negative = empty_conditioning(), empty_conditioning(negative=True)
        sigmas = flow_map_sigmas(model, steps, t_start, shift)
        sampler = ksampler(sample_flow_map, start_mode, bridge_scale, family=family_choice(family), gamma=gamma)
        guider = flow_map_guider(model, positive, negative, guidance)

        def sample(lr, tile_noise, preview):
            return guider.sample(torch.zeros_like(lr) if tile_noise is None else tile_noise, lr, sampler, sigmas,
                                 callback=preview, seed=seed, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED)
    out = sample_tiled(sample, model, samples, noise, tile, overlap, steps)
    return colour_fix_image(decode_sr(vae, {**latent, "samples": out}, vae_tile_size), image, colour_fix)


class OneStepSRUpscale:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The SR model: a diffusion model with an SR adapter/LoRA, or "
                                           "the OneStep SR default model."}),
            "vae": ("VAE", {"tooltip": "The model's VAE."}),
            "image": ("IMAGE", {"tooltip": "The low-resolution image."}),
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
            "tile_size": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 8,
                                  "tooltip": "Sample in tiles of this many output pixels (blended over "
                                             "tile_overlap); 0 = as large as free memory allows. Halved on "
                                             "out-of-memory."}),
            "vae_tile_size": VAE_TILE_SIZE,
            "colour_fix": (COLOUR_METHOD[0], {**COLOUR_METHOD[1], "default": "none"}),
        }, "optional": {
            "positive": ("CONDITIONING", {"tooltip": "Positive SR prompt (required by text-conditioned models)."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative SR prompt (needed when guidance != 1)."}),
            "tile_overlap": ("INT", {"default": 0, "min": 0, "max": 1024, "step": 8,
                                     "tooltip": "Overlap of neighbouring tiles in output pixels, blended with a cosine "
                                                f"ramp; 0 = automatic ({MIN_OVERLAP_PX} px, rounded up to whole latent "
                                                "cells)."}),
        }}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "upscale"
    CATEGORY = "OneStep SR"
    DESCRIPTION = "One-click one-step / any-step diffusion super-resolution."

    def upscale(self, **kwargs):
        return (upscale(**kwargs),)
