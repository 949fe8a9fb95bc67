"""Positive / negative guidance on a flow map.

    u_w = u(c-) + w * (u(c+) - u(c-))

A jump is affine in u, so the same mix on the jump X or on the pseudo-x0 gives the same
result; the samplers mix pseudo-x0s. w = 1 is the positive branch alone (one network
evaluation), w = 0 the negative branch alone. Outside the time interval [t_lo, t_hi]
guidance is off (w = 1).
"""

from __future__ import annotations

import torch

DEFAULT_POSITIVE_PROMPT = ("high-resolution photo, sharp focus, natural fine detail, "
                           "clean textures, realistic")
DEFAULT_NEGATIVE_PROMPT = ("blurry, oversmoothed, noisy, jpeg artifacts, compression artifacts, "
                           "low quality, low resolution, painterly")


def mix(positive: torch.Tensor, negative: torch.Tensor, scale: float) -> torch.Tensor:
    """negative + scale * (positive - negative), on u, X or pseudo-x0 alike."""
    return negative + scale * (positive - negative)


def scale_at(t: float, scale: float, t_lo: float = 0.0, t_hi: float = 1.0) -> float:
    """The guidance scale in force at time t: `scale` inside [t_lo, t_hi], else 1 (off)."""
    if t_lo > t_hi:
        raise ValueError(f"the guidance interval is empty: start {t_hi} lies below end {t_lo}")
    return scale if t_lo <= t <= t_hi else 1.0


def guided_denoiser(denoise, positive, negative, scale: float, t_lo: float = 0.0, t_hi: float = 1.0):
    """Wrap `denoise(x, sigma, cond) -> x0_hat` into a k-diffusion model with guidance.

    positive and negative are condition tensors with the batch on dim 0; both branches run
    as one batched forward, and where the scale in force is 1 only the positive one runs.
    """
    def model(x, sigma, **extra_args):
        w = scale_at(float(sigma.max()), scale, t_lo, t_hi)
        if w == 1.0:
            return denoise(x, sigma, positive, **extra_args)
        both = denoise(torch.cat([x, x]), torch.cat([sigma, sigma]),
                       torch.cat([positive, negative]), **extra_args)
        pos, neg = both.chunk(2)
        return mix(pos, neg, w)
    return model
