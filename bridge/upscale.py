"""The one-click upscale: the same functions the graph blocks call, in one call, with latent tiling
(progress and cancel per tile, tile halved on out-of-memory) and colour fix."""

from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.utils
import latent_preview
import torch
from server import PromptServer

from ..models.pipeline import sample_sr
from ..processing.tiling import auto_tile_size, default_overlap, tiled_apply
from ..samplers.start import start_uses_noise
from .default_model import compute_dtype, direct_network, with_realism
from .latents import colour_fix_image, decode_sr, encode_lr, target_size, vae_stride
from .model_info import model_info
from .sampling import empty_conditioning, family_choice, flow_map_guider, flow_map_sampler, flow_map_sigmas

# Latent side used to ask ComfyUI's model for its memory estimate per latent cell.
PROBE_SIDE = 64


def auto_latent_tile(model, latent: torch.Tensor) -> int:
    """Tile side in latent cells that fits the sampling in free memory, both as ComfyUI's memory management
    reckons them: the model's own estimate per latent cell, the device's free memory once the model is loaded."""
    probe = [2 * latent.shape[0], *latent.shape[1:-2], PROBE_SIDE, PROBE_SIDE]  # x2: guidance batch
    per_cell = model.model.memory_required(probe) / PROBE_SIDE ** 2
    comfy.model_management.load_models_gpu([model], memory_required=per_cell * max(latent.shape[-2:]) ** 2)
    free = comfy.model_management.get_free_memory(model.load_device)
    return auto_tile_size(per_cell, model.load_device, free_bytes=free, multiple=8, min_tile=16)


def sample_tiled(sample, model, latent: torch.Tensor, noise: torch.Tensor | None, tile: int, overlap: int,
                 steps: int, node_id=None) -> torch.Tensor:
    """`sample(lr_tile, noise_tile or None, preview)` tile by tile over the SR latent (one tile
    when it fits); the noise is drawn for the whole latent first so the result does not depend
    on the tiling. As ComfyUI's samplers do, the node's bar advances and shows a preview (when ComfyUI's
    preview method is on): per step with one tile (`preview(step, x0, x, steps)`, ComfyUI's sampler
    callback), per finished tile with several, the node also saying "tile i of n" (`node_id`, the node's
    UNIQUE_ID: its progress text)."""
    channels = latent.shape[1]
    single = tile >= max(latent.shape[-2:])
    bar = comfy.utils.ProgressBar(steps, node_id=node_id)
    preview = latent_preview.prepare_callback(model, steps) if single else None
    previewer = None if single else latent_preview.get_previewer(model.load_device, model.model.latent_format)
    finished = {}

    def sample_tile(stacked: torch.Tensor) -> torch.Tensor:
        lr, tile_noise = stacked.split(channels, dim=1) if noise is not None else (stacked, None)
        finished["tile"] = sample(lr, tile_noise, preview).to(lr)
        return finished["tile"]

    def tile_done(done: int, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if single:
            return
        image = None if previewer is None else previewer.decode_latent_to_preview_image("JPEG", finished["tile"])
        bar.update_absolute(done, total, image)
        if node_id is not None:
            PromptServer.instance.send_progress_text(f"OneStep SR: tile {done} of {total}", node_id)

    stacked = latent if noise is None else torch.cat([latent, noise.to(latent)], dim=1)
    return tiled_apply(stacked, sample_tile, scale=1, tile=tile, overlap=overlap, callback=tile_done)


def tile_sampler(model, positive, negative, steps, family, start_mode, t_start, shift, gamma, bridge_scale, guidance,
                 seed, uses_noise):
    """sample(lr_tile, noise_tile or None, preview) -> the SR latent of one tile, on one of two roads.

    The default model, when nothing hooks into ComfyUI's sampling and the settings are its own
    (start mode lr at t = 1, no noise, no text), runs its pure pipeline: the same network evaluations
    without the full-image tensor passes ComfyUI's sampler and cond batching add per call (measured
    up to 1.36x the pure pipeline's time on a CPU; BENCHMARKS.md). Every other MODEL runs through
    ComfyUI's guider and the flow-map SAMPLER. Both take the same schedule.
    """
    sigmas = flow_map_sigmas(model, steps, t_start, shift)
    direct = (positive is None and not uses_noise and start_mode == "lr" and t_start == 1.0
              and family_choice(family) in (None, *model_info(model).families))
    net = direct_network(model) if direct else None
    if net is not None:  # the default model samples in flow time, which its sigmas are
        # where and in what ComfyUI's sampler would feed it: under --lowvram some weights stay offloaded
        device, dtype = model.load_device, compute_dtype(model)

        def sample(lr, _, preview):
            callback = None if preview is None else lambda d: preview(d["i"], d["denoised"], d["x"], steps)
            return sample_sr(net, lr.to(device=device, dtype=dtype), sigmas, gamma, seed, guidance, callback)
        return sample
    if positive is None:
        positive, negative = empty_conditioning(), empty_conditioning(negative=True)
    sampler = flow_map_sampler(start_mode, bridge_scale, family_choice(family), gamma)
    guider = flow_map_guider(model, positive, negative, guidance)

    def sample(lr, tile_noise, preview):
        return guider.sample(torch.zeros_like(lr) if tile_noise is None else tile_noise, lr, sampler, sigmas,
                             callback=preview, seed=seed, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED)
    return sample


def upscale(model, vae, image, scale_by, steps, family, start_mode, t_start, shift, gamma, bridge_scale,
            guidance, seed, upscale_method="bicubic", tile_size=0, vae_tile_size=1024, colour_fix="none",
            positive=None, negative=None, tile_overlap=0, realism=0.0, node_id=None):
    """Encode -> flow-map sampling (tiled) -> decode -> colour fix, as the graph form does it; realism > 0
    first applies the default model's realism adapter at that strength (default_model.with_realism). node_id:
    the calling node's UNIQUE_ID, for its progress text."""
    model = with_realism(model, realism)
    if positive is None and model_info(model).needs_text:
        raise ValueError("OneStep SR Upscale: connect a 'positive' CONDITIONING (e.g. from 'OneStep SR "
                         "Prompts' or CLIP Text Encode); diffusion models need their text conditioning")
    latent = encode_lr(vae, image, *target_size(image, scale_by, 0, 0), upscale_method, vae_tile_size)
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    # the LR start modes read no noise (unless the model was trained with noise on its source)
    uses_noise = start_uses_noise(start_mode, model_info(model).source_noise)
    noise = comfy.sample.prepare_noise(samples, seed) if uses_noise else None
    stride = vae_stride(vae)
    overlap = -(-tile_overlap // stride) if tile_overlap else default_overlap(1, stride)
    if tile_size and tile_size < 2 * overlap * stride:
        raise ValueError(f"OneStep SR Upscale: tile_size {tile_size} px is below the smallest tile, "
                         f"{2 * overlap * stride} px (tiles overlap by {overlap * stride} px); raise it, lower tile_overlap "
                "or use 0 (auto)")
    tile = tile_size // stride if tile_size else auto_latent_tile(model, samples)
    sample = tile_sampler(model, positive, negative, steps, family, start_mode, t_start, shift, gamma, bridge_scale,
                          guidance, seed, uses_noise)
    out = sample_tiled(sample, model, samples, noise, tile, overlap, steps, node_id)
    return colour_fix_image(decode_sr(vae, {**latent, "samples": out}, vae_tile_size), image, colour_fix)
