"""safetensors files: tensors only (nothing is unpickled), metadata as one JSON value per key."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_write

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")


def encode_metadata(metadata: dict) -> dict[str, str]:
    """safetensors metadata (str -> str) holding one JSON value per key."""
    try:
        return {str(k): json.dumps(v) for k, v in metadata.items()}
    except TypeError as err:
        raise TypeError(f"safetensors metadata must be JSON-serialisable: {err}") from None


@contextlib.contextmanager
def opened(path: str | os.PathLike):
    """safetensors' reader on `path`; a file that is not safetensors (a renamed pickle, a truncated or
    bomb header: safetensors checks the header before reading it) raises ValueError naming it."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            yield handle
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{Path(path).name} is not a safetensors file ({err}); weights are read from safetensors "
                         "only (a pickled .pt/.ckpt/.bin can run code when loaded): if it is a renamed pickle, "
                         "convert it with safetensors.torch.save_file first") from None


def decoded(raw: dict[str, str]) -> dict:
    """Metadata values decoded from JSON (as `save_tensors` writes them); other tools' plain-text
    values are kept as text."""
    out = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def read_metadata(path: str | os.PathLike) -> dict:
    """The decoded metadata of a safetensors file written by `save_tensors`."""
    with opened(path) as handle:
        return decoded(handle.metadata() or {})


def read_header(path: str | os.PathLike) -> tuple[dict[str, list[int]], dict]:
    """({tensor name: shape}, decoded metadata) of a safetensors file, without reading any tensor."""
    with opened(path) as handle:
        return ({key: list(handle.get_slice(key).get_shape()) for key in handle.keys()},
                decoded(handle.metadata() or {}))


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Atomically write tensors (made contiguous, on the CPU) and JSON metadata to `path`."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=encode_metadata(metadata)))


def read_tensor_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, raw metadata) of any safetensors file."""
    with opened(path) as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata() or {}


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, decoded metadata) of a safetensors file written by `save_tensors`."""
    tensors, raw = read_tensor_file(path)
    return tensors, decoded(raw)


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, raw metadata) of a .safetensors file; other suffixes are refused (no unpickling)."""
    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise ValueError(f"{path.name}: adapters are read from .safetensors files only (pickled .pt/.ckpt/.bin "
                         "files can run code when loaded); convert it to safetensors first")
    return read_tensor_file(path)


def prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors with `prefix.` put before every key."""
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors whose key starts with `prefix.`, without it."""
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
