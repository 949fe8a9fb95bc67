"""Checkpoints as single safetensors files: tensors only (no pickle), JSON metadata, atomic writes.

Layout of a training checkpoint:
    net.<name>                  the trained network's state_dict, frozen parameters left out
    ema.<name>                  the EMA network's state_dict, the same entries
    optimizer.<index>.<key>     the optimizer's per-parameter state tensors
    history.loss                the loss of every optimizer step so far (float32 [steps])
Metadata: each key holds one JSON value (`read_metadata` decodes them): "format", "step",
"objective", "objective_options", "config", "optimizer" (param groups and non-tensor state)
and whatever the caller added (family, start mode, scales seen, data manifest hash, ...).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

FORMAT = "onestep_sr.training/1"


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call write(temp_path) on a temporary file beside `path`, then move it over `path`.

    An interrupted write leaves `path` as it was (a stray temporary file at worst, never a
    truncated `path`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the file a normal file's mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def encode_metadata(metadata: dict) -> dict[str, str]:
    """safetensors metadata (str -> str) holding one JSON value per key."""
    try:
        return {str(k): json.dumps(v) for k, v in metadata.items()}
    except TypeError as err:
        raise TypeError(f"checkpoint metadata must be JSON-serialisable: {err}") from None


def read_metadata(path: str | os.PathLike) -> dict:
    """The decoded metadata of a safetensors file written by this module."""
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    return {k: json.loads(v) for k, v in raw.items()}


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Atomically write tensors (made contiguous, on the CPU) and JSON metadata to `path`."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=encode_metadata(metadata)))


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, decoded metadata) of a safetensors file."""
    return load_file(str(path)), read_metadata(path)


def prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


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
