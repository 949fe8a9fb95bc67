"""Exponential moving average of a network's weights (the target network of the objectives)."""

from __future__ import annotations

import copy

import torch


def make_ema(net: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of `net` in eval mode, to be kept up to date with `update_ema`."""
    return copy.deepcopy(net).requires_grad_(False).eval()


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * net for parameters; buffers are copied."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"the EMA decay must lie in [0, 1], got {decay}")
    ema_params, params = list(ema.parameters()), list(net.parameters())
    if len(ema_params) != len(params):
        raise ValueError("the EMA network and the trained network have different parameters")
    for e, p in zip(ema_params, params):
        e.lerp_(p.detach().to(e.dtype), 1.0 - decay)
    for e, b in zip(ema.buffers(), net.buffers()):
        e.copy_(b)
