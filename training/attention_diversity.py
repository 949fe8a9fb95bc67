"""FluxSR's attention-diversification loss (ADL): the mean pairwise cosine similarity of a transformer's
tokens on chosen blocks, read through forward hooks, as a regulariser to lower during training.

For the N tokens h_1..h_N of one sample at one block (unit-normalised, ĥ_i = h_i / |h_i|),

    S = 1 / (N (N - 1)) · Σ_{i ≠ j} ĥ_i · ĥ_j  =  (|Σ_i ĥ_i|² - N) / (N (N - 1)),

the right-hand form costing O(N D) instead of O(N² D). The loss is the mean of S over the samples and the
hooked blocks. FluxSR adds it to push apart tokens that collapse onto each other (its explanation of the
periodic high-frequency artefacts of one-step FLUX SR).

    with TokenSimilarity(net, ("double_blocks.0", "single_blocks.0")) as similarity:
        u = net(x, t, s, cond)
    loss = loss + weight * similarity.value()

A hooked block may return a tensor or a tuple/list (FLUX's double blocks return (img, txt)); the first
tensor of shape [B, N, D] with N > 1 is taken as its tokens.
"""

from __future__ import annotations

import torch
from torch import nn


def mean_pairwise_cosine(tokens: torch.Tensor) -> torch.Tensor:
    """[B, N, D] -> [B]: the mean cosine similarity over the N (N - 1) ordered pairs of distinct tokens."""
    if tokens.ndim != 3 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [B, N >= 2, D], got {tuple(tokens.shape)}")
    n = tokens.shape[1]
    unit = torch.nn.functional.normalize(tokens.float(), dim=-1)
    total = unit.sum(dim=1).square().sum(dim=-1)
    return (total - n) / (n * (n - 1))


def token_tensor(output):
    """The tokens [B, N, D] in a block's output (a tensor, or the first fitting tensor of a tuple/list)."""
    candidates = output if isinstance(output, (tuple, list)) else (output,)
    for value in candidates:
        if isinstance(value, torch.Tensor) and value.ndim == 3 and value.shape[1] > 1:
            return value
    return None


def matching_blocks(module: nn.Module, names) -> list[tuple[str, nn.Module]]:
    """The sub-modules whose dotted name equals or ends with one of `names` (in module order); an empty
    match is an error naming what the module has."""
    names = tuple(names)
    found = [(path, sub) for path, sub in module.named_modules()
             if path and any(path == name or path.endswith("." + name) for name in names)]
    if not found:
        blocks = [path for path, _ in module.named_modules() if path.count(".") <= 2 and "blocks." in path][:12]
        raise ValueError(f"attention diversification: no block of {type(module).__name__} is named {list(names)}; "
                         f"its blocks include {blocks}")
    return found


class TokenSimilarity:
    """A context manager hooking `names`' blocks of `module`; `value()` is the mean token similarity seen
    (a differentiable scalar), `per_block()` the values per hooked block (floats)."""

    def __init__(self, module: nn.Module, names):
        self.blocks = matching_blocks(module, names)
        self.values: dict[str, list[torch.Tensor]] = {}
        self.handles = []

    def _hook(self, name):
        def record(_module, _inputs, output):
            tokens = token_tensor(output)
            if tokens is not None:
                self.values.setdefault(name, []).append(mean_pairwise_cosine(tokens).mean())
        return record

    def __enter__(self):
        self.values.clear()
        self.handles = [block.register_forward_hook(self._hook(name)) for name, block in self.blocks]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []
        return False

    def value(self) -> torch.Tensor:
        seen = [v for values in self.values.values() for v in values]
        if not seen:
            raise RuntimeError(f"attention diversification: the hooked blocks {[n for n, _ in self.blocks]} "
                               "produced no [B, N, D] token tensor during the forward pass")
        return torch.stack(seen).mean()

    def per_block(self) -> dict[str, float]:
        return {name: float(torch.stack(values).mean()) for name, values in self.values.items()}
