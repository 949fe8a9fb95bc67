"""Training checkpoints as single safetensors files (written with files/tensors.py: no pickle, atomic).

Layout of a training checkpoint:
    net.<name>                  the trained network's state_dict, frozen parameters left out
    ema.<name>                  the EMA network's state_dict, the same entries
    optimizer.<index>.<key>     the optimizer's per-parameter state tensors
    history.loss                the loss of every optimizer step so far (float32 [steps])
Metadata: each key holds one JSON value (files.tensors.read_metadata decodes them): "format", "step",
"objective", "objective_options", "config", "optimizer" (param groups and non-tensor state)
and whatever the caller added (family, start mode, scales seen, data manifest hash, ...).
"""

from __future__ import annotations

import torch

FORMAT = "onestep_sr.training/1"


class CheckpointMismatch(ValueError):
    """A run folder's checkpoint that another network or adapter wrote (another rank, targets or model)."""


def shape_mismatches(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """The entries of `state` whose shapes differ from `module`'s (load_state_dict raises a bare RuntimeError
    on them, even with strict=False)."""
    own = module.state_dict()
    return [f"{key} {tuple(value.shape)} (network {tuple(own[key].shape)})" for key, value in state.items()
            if key in own and own[key].shape != value.shape]


def flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state_dict as (tensors, JSON-ready rest)."""
    tensors, scalars = {}, {}
    for index, state in state_dict["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    """The inverse of `flatten_optimizer`."""
    state: dict[int, dict] = {}
    for flat, value in list(tensors.items()) + list(rest["scalars"].items()):
        index, key = flat.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": rest["param_groups"]}
