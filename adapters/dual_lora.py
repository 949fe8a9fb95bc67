"""Trainable dual-branch LoRA (pure PyTorch): the layer `formats.DualBranchLoRA` describes, with trained
parameters instead of a file's tensors, injected in place into a network and taken out again, and
written in the ``dual_branch`` file layout (``<prefix><module>.lora_A1/lora_B1/lora_A2/lora_B2.weight``).

    add_dual_branch_lora(net, spec, {"blocks.0.qkv": split, ...})   # split: see formats.DualBranchLoRA
    ...train...
    save_dual_branch_lora("sr.safetensors", net, spec, prefix="diffusion_model.", metadata={...})
    remove_dual_branch_lora(net)                                   # the plain network again, flags as before

Both branches start like peft's LoRA (A Kaiming-uniform, B zero: the network's output is unchanged) with
their own A, and train at the same scaling alpha / rank. The file's metadata key ``onestep_sr_dual_branch``
records the branch scalings, the split rule and the recipe; Load SR Adapter reads them (ODTSR's files carry
none: the halves rule and the loader's scalings apply to those).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from ..files.tensors import save_tensors
from .formats import DUAL_PARTS, DualBranchLoRA
from .lora import BASE_REQUIRES_GRAD, LoraSpec

DUAL_METADATA_KEY = "onestep_sr_dual_branch"
# the split rule of a trained file: the token layout the Dual-Branch Patch knows (bridge/dual_branch.py)
PATCH_SPLIT = "dual_branch_patch"


class DualBranchLinear(nn.Module):
    """`base_layer(x)` plus the two trained low-rank updates of `formats.DualBranchLoRA` (split by `split`)."""

    def __init__(self, base_layer: nn.Module, rank: int, scaling: float, split):
        super().__init__()
        self.base_layer = base_layer
        weight = base_layer.weight
        for branch in (1, 2):
            down = torch.empty(rank, weight.shape[1], dtype=torch.float32, device=weight.device)
            nn.init.kaiming_uniform_(down, a=math.sqrt(5))  # peft's LoRA initialisation of A
            setattr(self, f"lora_A{branch}", nn.Parameter(down))
            setattr(self, f"lora_B{branch}", nn.Parameter(torch.zeros(weight.shape[0], rank, dtype=torch.float32,
                                                                      device=weight.device)))
        self.scaling = scaling
        self.split = split

    def lora(self) -> DualBranchLoRA:
        return DualBranchLoRA(self._parameters, self.scaling, self.scaling, self.split)

    def forward(self, x, *args, **kwargs):
        return self.lora().apply(x, self.base_layer(x, *args, **kwargs))


def dual_branch_layers(net: nn.Module) -> dict[str, DualBranchLinear]:
    return {name: module for name, module in net.named_modules() if isinstance(module, DualBranchLinear)}


def add_dual_branch_lora(net: nn.Module, spec: LoraSpec, splits: dict) -> nn.Module:
    """Replace each module `path` of `splits` ({path: split}) by a DualBranchLinear around it and freeze
    everything else; returns `net`."""
    if dual_branch_layers(net):
        raise ValueError("the network already has dual-branch LoRA layers")
    if not splits:
        raise ValueError("a dual-branch LoRA needs at least one target layer")
    flags = [(p, p.requires_grad) for p in net.parameters()]
    net.requires_grad_(False)
    for path, split in splits.items():
        parent, _, child = path.rpartition(".")
        holder = net.get_submodule(parent)
        setattr(holder, child, DualBranchLinear(getattr(holder, child), spec.rank, spec.scaling, split))
    setattr(net, BASE_REQUIRES_GRAD, flags)
    return net


def remove_dual_branch_lora(net: nn.Module) -> nn.Module:
    """Undo `add_dual_branch_lora` in place (the base layers back, their requires_grad flags as before)."""
    layers = dual_branch_layers(net)
    if not layers:
        raise ValueError("the network has no dual-branch LoRA layers: nothing to remove")
    for name, layer in layers.items():
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent), child, layer.base_layer)
    for p, flag in net.__dict__.pop(BASE_REQUIRES_GRAD, ()):
        p.requires_grad_(flag)
    return net


def dual_branch_state_dict(net: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """{<prefix><module>.lora_A1.weight: tensor, ...}: the ``dual_branch`` layout of adapters/formats.py."""
    out = {f"{prefix}{name}.{part}.weight": getattr(layer, part).detach()
           for name, layer in dual_branch_layers(net).items() for part in DUAL_PARTS}
    if not out:
        raise ValueError("the network has no dual-branch LoRA layers (call add_dual_branch_lora first)")
    return out


def save_dual_branch_lora(path: str | os.PathLike, net: nn.Module, spec: LoraSpec, prefix: str = "",
                          metadata: dict | None = None, overwrite: bool = False) -> Path:
    """Write the dual-branch LoRA of `net` (atomically; never over an existing file unless `overwrite`)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True or choose another name")
    if path.suffix != ".safetensors":
        raise ValueError(f"a dual-branch LoRA file must end in .safetensors, got {path.name}")
    info = {"file_format": "dual_branch", "key_prefix": prefix, "split": PATCH_SPLIT, **asdict(spec),
            "target_modules": list(spec.target_modules), "noise_scale": spec.scaling,
            "condition_scale": spec.scaling, **(metadata or {})}
    return save_tensors(path, dual_branch_state_dict(net, prefix), {DUAL_METADATA_KEY: info})


def dual_branch_info(metadata: dict) -> dict | None:
    """The ``onestep_sr_dual_branch`` metadata of a file (None for files without it, e.g. ODTSR's)."""
    info = metadata.get(DUAL_METADATA_KEY)
    if info is None:
        return None
    if isinstance(info, str):
        info = json.loads(info)
    if not isinstance(info, dict) or not all(isinstance(info.get(k), (int, float)) for k in ("noise_scale",
                                                                                            "condition_scale")):
        raise ValueError(f"the {DUAL_METADATA_KEY!r} metadata must be a JSON object with numeric noise_scale and "
                         "condition_scale")
    return info
