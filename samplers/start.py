"""Where an SR sampler starts (the "start mode"), in the flow parametrization.

| mode        | x at the start time t                      | used by                          |
|-------------|--------------------------------------------|----------------------------------|
| `lr`        | the LR latent, t = 1, no noise             | FlowSR: x_hr = z_lr - v(z_lr, 1) |
| `lr_at_T`   | the LR latent at t = T (T a parameter)     | FluxSR                           |
| `noise`     | pure noise; the LR latent is a condition   | TEASR precursor (TwinFlow)       |
| `noised_lr` | (1 - t) * z_lr + t * noise                 | ODTSR-like, img2img              |
| `bridge`    | z_lr + b * sqrt(t (1 - t)) * noise         | LBM-style latent bridge          |
"""

from __future__ import annotations

import math

import torch

from .flow_map import add_source

START_MODES = ("lr", "lr_at_T", "noise", "noised_lr", "bridge")
# Modes whose start point exists in ComfyUI's sigma space for eps / v models too.
VE_START_MODES = ("noise", "noised_lr")


def start_uses_noise(mode: str, source_noise: float = 0.0) -> bool:
    """Whether `start_point` reads its noise argument (callers may skip drawing it otherwise)."""
    return mode not in ("lr", "lr_at_T") or source_noise > 0


def start_point(mode: str, lr_latent: torch.Tensor, noise: torch.Tensor | None, t: float,
                bridge_scale: float = 1.0, source_noise: float = 0.0) -> torch.Tensor:
    """The sampler's first x for `mode` at start time t (flow parametrization). `noise` may be
    None where `start_uses_noise` says it is not read.

    source_noise (modes lr, lr_at_T): the std of Gaussian noise on the LR source, for models
    trained with that noise augmentation (as the SD x4 upscaler is), x = z_lr + source_noise * noise.
    """
    if mode not in START_MODES:
        raise ValueError(f"start mode must be one of {START_MODES}, got {mode!r}")
    if not 0.0 < t <= 1.0:
        raise ValueError(f"the start time must lie in (0, 1], got {t}")
    if mode == "lr" and not math.isclose(t, 1.0):
        raise ValueError(f"start mode 'lr' starts at t = 1, but the schedule starts at {t}; "
                         "use 'lr_at_T' to start the LR latent at an earlier time")
    if mode in ("lr", "lr_at_T"):
        return lr_latent + source_noise * noise if source_noise else lr_latent.clone()
    if mode == "noise":
        return noise.clone()
    if mode == "noised_lr":
        return add_source(lr_latent, noise, t)
    return lr_latent + bridge_scale * math.sqrt(t * (1 - t)) * noise
