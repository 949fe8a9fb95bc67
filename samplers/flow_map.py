"""The flow-map primitive shared by every sampler, objective and model in the package.

Time convention (ComfyUI / SD3 / FLUX): t = 1 is the source, t = 0 the HR latent, and the
linear path is ``x_t = (1 - t) * x_hr + t * x_src`` with velocity ``v = x_src - x_hr``.

A flow map jumps along the ODE, ``X(x, t -> s) = x - (t - s) * u(x, t, s)``, where ``u`` is
the average velocity over [s, t] (``u(x, t, t) = v(x, t)``). Writing the network's answer as
a pseudo-x0, ``x0_hat = x - t * u``, turns every jump into one Euler/DDIM step:

    X(x, t -> s) = x0_hat + (s / t) * (x - x0_hat)

The same formula holds in ComfyUI's variance-exploding sigma space for eps/v models, so a
model wrapper that returns x0_hat for the pair (t, s) lets ComfyUI's own maths and CFG run
unchanged. This module is the one place where that algebra lives.
"""

from __future__ import annotations

import torch

# How each model family feeds the pair (t, s) to its network (`time_inputs`).
FAMILIES = ("plain", "shortcut", "two_time", "dual_branch")
PARAMETRIZATIONS = ("flow", "ve")


def per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [B] time tensor shaped to broadcast against a [B, ...] tensor."""
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def jump(x: torch.Tensor, denoised: torch.Tensor, t, s) -> torch.Tensor:
    """X(x, t -> s) from the model's pseudo-x0 for that jump; needs t > 0."""
    return denoised + (s / t) * (x - denoised)


def average_velocity(x: torch.Tensor, denoised: torch.Tensor, t) -> torch.Tensor:
    """u = (x - x0_hat) / t: the average velocity implied by a pseudo-x0."""
    return (x - denoised) / t


def denoised_from_velocity(x: torch.Tensor, u: torch.Tensor, t) -> torch.Tensor:
    """x0_hat = x - t * u: the pseudo-x0 a velocity-predicting network stands for."""
    return x - t * u


def flow_map(x: torch.Tensor, u: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """X(x, t -> s) = x - (t - s) u for per-sample times t, s of shape [B], through the pseudo-x0."""
    t, s = per_sample(t, x), per_sample(s, x)
    return jump(x, denoised_from_velocity(x, u, t), t, s)


def time_inputs(family: str, t: torch.Tensor, s: torch.Tensor) -> dict[str, torch.Tensor]:
    """The time arguments a network of `family` takes for the jump t -> s.

    plain:       t only; s is implied (a flow-matching model takes an Euler step, a
                 consistency model always jumps to 0).
    shortcut:    (t, d) with step size d = t - s (Frans et al.).
    two_time:    (t, s), as Lagrangian / Eulerian / MeanFlow maps take them.
    dual_branch: (t, s) too, t for the current noise state and s for the target on separate time
                 embedders (TEASR's dual-branch transformer; bridge/dual_branch.py); the sampler also
                 hands the model the LR latent as its condition tokens.
    """
    if family == "plain":
        return {"t": t}
    if family == "shortcut":
        return {"t": t, "d": t - s}
    if family in ("two_time", "dual_branch"):
        return {"t": t, "s": s}
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def add_source(x0: torch.Tensor, source: torch.Tensor, t, parametrization: str = "flow") -> torch.Tensor:
    """The point at time t between data x0 and `source`.

    flow: (1 - t) * x0 + t * source (rectified flow, ComfyUI's CONST models).
    ve:   x0 + t * source (ComfyUI's sigma space for eps / v models).
    """
    if parametrization == "flow":
        return (1 - t) * x0 + t * source
    if parametrization == "ve":
        return x0 + t * source
    raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}")


def source_estimate(x: torch.Tensor, x0: torch.Tensor, t, parametrization: str = "flow") -> torch.Tensor:
    """The source that `add_source` would need to give x from x0 at time t (its inverse)."""
    if parametrization == "flow":
        return (x - (1 - t) * x0) / t
    if parametrization == "ve":
        return (x - x0) / t
    raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}")


def shifted_times(steps: int, t_start: float = 1.0, shift: float = 1.0) -> torch.Tensor:
    """steps + 1 times from t_start down to 0, evenly spaced then time-shifted.

    The shift is the one FLUX and SD3 use, f(u) = shift * u / (1 + (shift - 1) * u), applied to
    the fraction u of the way from 0 to t_start, so the schedule starts exactly at t_start:
    values above 1 spend more of the steps near the start. shift = 1 is linear.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not 0.0 < t_start <= 1.0:
        raise ValueError(f"t_start must lie in (0, 1], got {t_start}")
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (t_start * shift * u / (1 + (shift - 1) * u)).float()
