"""Building blocks the objectives share: the batch contract, per-sample distances, time draws."""

from __future__ import annotations

import torch


def mean_square(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared difference, shape [B]."""
    return (a - b).float().square().flatten(1).mean(1)


def mean_absolute(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample mean absolute difference, shape [B]."""
    return (a - b).float().abs().flatten(1).mean(1)


DISTANCES = {"l2": mean_square, "l1": mean_absolute}


def unpack_batch(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(x0, x1, cond) of a batch {"x0": data, "x1": source, "cond": optional}, checked."""
    missing = [k for k in ("x0", "x1") if k not in batch]
    if missing:
        raise KeyError(f"the batch lacks {missing}: a batch is a dict with 'x0' (data), 'x1' (source) "
                       "and optionally 'cond'")
    x0, x1 = batch["x0"], batch["x1"]
    if x0.shape != x1.shape:
        raise ValueError(f"batch 'x0' {tuple(x0.shape)} and 'x1' {tuple(x1.shape)} must have the same "
                         "shape: bring the source to the data's size before training")
    return x0, x1, batch.get("cond")


def repeat_cond(cond: torch.Tensor | None, times: int) -> torch.Tensor | None:
    """cond stacked `times` times on the batch axis (None stays None), for one call on stacked inputs."""
    return None if cond is None else torch.cat([cond] * times)


def uniform_times(n: int, like: torch.Tensor, generator, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """n times uniform in [low, high), float32 on `like`'s device, drawn from `generator`."""
    u = torch.rand(n, generator=generator, device=like.device, dtype=torch.float32)
    return low + (high - low) * u


def batch_split(batch_size: int, fraction: float) -> int:
    """How many samples of a batch go to the off-diagonal term (at least one if fraction > 0)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the fraction of the batch must lie in [0, 1], got {fraction}")
    return 0 if fraction == 0 else max(1, round(batch_size * fraction))
