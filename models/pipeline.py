"""Upscale images with a flow-map SR network: the pure pipeline the CLI, nodes and benchmark share.

Start mode 'lr' (FlowSR): x at t = 1 is the LR image bicubic-upsampled to the output size in
[-1, 1] plus the model's seeded source noise (`lr_source`); the clean upsampled LR is passed
as the condition (a model with condition=False ignores it). The any-step sampler of
`samplers.sampling` runs over the schedule `shifted_times(steps)` (or the one the caller gives); a small wrapper turns the network's
average velocity into the pseudo-x0 the sampler expects, for the target time the sampler
puts in transformer_options.
"""

from __future__ import annotations

import torch

from ..samplers.flow_map import shifted_times
from ..samplers.guidance import guided_denoiser
from ..samplers.sampling import flow_map_denoiser, flow_map_model, sample_flow_map
from ..samplers.start import start_point, start_uses_noise
from ..processing.resample import bicubic_downscale, bicubic_upscale
from .precision import autocast

START_MODE = "lr"


def lr_source(lr_up: torch.Tensor, source_noise: float, generator: torch.Generator) -> torch.Tensor:
    """The flow's source x1: the upsampled LR image (in [-1, 1]) plus Gaussian noise of std
    `source_noise` drawn from `generator` (on the CPU, so a seed gives the same source anywhere).
    Training and sampling both build the source here."""
    noise = (torch.randn(lr_up.shape, generator=generator, dtype=torch.float32).to(lr_up)
             if start_uses_noise(START_MODE, source_noise) else None)
    return start_point(START_MODE, lr_up, noise, 1.0, source_noise=source_noise)


def softened(x: torch.Tensor) -> torch.Tensor:
    """What the default model's "negative prompt" sees: the state through a 2x coarser image.

    The network takes no text, so its negative branch is its own answer for a blurrier input;
    guidance w > 1 steers the jump away from that (FlowMapSR's negative "blurry, oversmoothed")."""
    height, width = x.shape[-2:]
    coarse = bicubic_downscale(x[..., : height // 2 * 2, : width // 2 * 2], 2)
    blurred = bicubic_upscale(coarse, 2)
    return torch.nn.functional.pad(blurred, (0, width - blurred.shape[-1], 0, height - blurred.shape[-2]),
                                   mode="replicate")


def soften_where(x: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """x with the samples whose flag is set replaced by `softened` (flags: one per sample)."""
    if not flags.any():  # the positive-only batches of a guided run pay nothing
        return x
    return torch.where(flags.reshape(-1, *([1] * (x.ndim - 1))).bool(), softened(x), x)


def sr_model(net, cond: torch.Tensor, guidance: float = 1.0):
    """The k-diffusion model the sampler runs: guided when guidance != 1, with the positive and
    the softened negative branch in one batched forward."""
    if guidance == 1.0:
        return flow_map_model(net, net.family, cond)
    denoise = flow_map_denoiser(net, net.family)

    def branches(x, sigma, flags, **extra_args):
        seen = soften_where(x, flags)
        # the velocity of the softened state, applied at the real state: the branches differ in u
        # alone, so the mix is guidance on u (samplers/guidance.py), as in ComfyUI's CFG on this model
        return denoise(seen, sigma, cond.repeat(x.shape[0] // cond.shape[0], 1, 1, 1), **extra_args) + (x - seen)

    batch = cond.shape[0]
    # the flags live beside the state: torch.where takes no CPU mask for a GPU tensor
    flags = torch.zeros(batch, device=cond.device), torch.ones(batch, device=cond.device)
    return guided_denoiser(branches, *flags, guidance)


def _check(image: torch.Tensor, scale: int, steps: int) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] not in (1, 3, 4):
        raise ValueError("image must be a float tensor [B, C, H, W] with C = 1 (grey), 3 (RGB) or "
                         f"4 (RGBA); got shape {getattr(image, 'shape', None)}")
    if not image.is_floating_point():
        raise ValueError(f"image must be float in [0, 1], got {image.dtype}; divide uint8 by 255")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer (the model was trained for 4 and 8), got {scale}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")


@torch.no_grad()
def sample_sr(net, cond: torch.Tensor, times: torch.Tensor, gamma: float = 0.0, seed: int = 0,
              guidance: float = 1.0, callback=None) -> torch.Tensor:
    """The SR sample for `cond`, the LR image upsampled to the output size in [-1, 1]
    ([B, 3, H, W]): the source `lr_source` draws for `seed`, chained through the jumps of the
    schedule `times` (from 1 down to 0)."""
    # the same noise as ComfyUI's prepare_noise(latent, seed), so the node and the CLI agree
    x = lr_source(cond, net.source_noise, torch.Generator().manual_seed(seed))
    extra_args = {"model_options": {}, "seed": seed}
    # float32: MPS has no float64, and the times enter the network in the state's precision anyway
    times = times.to(device=cond.device, dtype=torch.float32)
    return sample_flow_map(sr_model(net, cond, guidance), x, times, extra_args, callback,
                           disable=True, family=net.family, gamma=gamma)


@torch.no_grad()
def upscale(net, image: torch.Tensor, scale: int, steps: int = 1, gamma: float = 0.0, seed: int = 0,
            shift: float = 1.0, guidance: float = 1.0, precision: str = "fp32") -> torch.Tensor:
    """[B, C, H, W] in [0, 1] -> [B, C, H*scale, W*scale] in [0, 1] with `steps` network calls.

    Greyscale is expanded to RGB for the network and averaged back; alpha is upscaled by
    bicubic and carried through. gamma > 0 re-noises between steps (seeded by `seed`);
    guidance w != 1 steers away from the `softened` negative branch. It runs on the device of
    `net`'s weights and returns on `image`'s. precision "bf16" / "fp16" (or "auto" where the device
    computes one natively, models/precision.py) runs the network under that autocast: twice as fast
    on such CPUs, held-out PSNR within 0.001 dB of float32.
    """
    _check(image, scale, steps)
    channels = image.shape[1]
    rgb = image[:, :3] if channels != 1 else image.expand(-1, 3, -1, -1)
    param = next(net.parameters(), None)
    device, dtype = (param.device, param.dtype) if param is not None else (image.device, image.dtype)
    cond = bicubic_upscale(rgb.to(device=device, dtype=dtype), scale) * 2 - 1
    with autocast(precision, device.type):
        x = sample_sr(net, cond, shifted_times(steps, 1.0, shift), gamma, seed, guidance)
    out = ((x.float() + 1) / 2).clamp(0, 1).to(device=image.device, dtype=image.dtype)
    if channels == 1:
        return out.mean(1, keepdim=True)
    if channels == 4:
        return torch.cat([out, bicubic_upscale(image[:, 3:], scale)], dim=1)
    return out
