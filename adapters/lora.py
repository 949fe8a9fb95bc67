"""LoRA adapters on flow-map networks (peft) and the files they travel in.

    spec = LoraSpec(rank=8, target_modules=("conv1", "conv2"))
    add_lora(net, spec)                       # peft layers injected in place, base frozen
    ...train...
    save_lora("sr.safetensors", net, spec)    # ComfyUI keys: stock "Load LoRA" applies it
    save_lora("sr_peft", net, spec, file_format="peft")   # adapter_config.json + adapter_model.safetensors
    net = load_lora(FlowMapSRNet(...), "sr.safetensors")   # back into a fresh base network
    remove_lora(net)                          # the plain base network again, flags as before

ComfyUI format: for every adapted module at path P of the network, the tensors
``{prefix}P.lora_down.weight`` (peft's lora_A), ``{prefix}P.lora_up.weight`` (lora_B) and
``{prefix}P.alpha``. ComfyUI's `comfy.lora.model_lora_keys_unet` maps every
``diffusion_model.<module path>`` of a model's state dict to that module's weight, and
applies ``W += strength * alpha / rank * up @ down`` — peft's forward at scaling alpha / rank.
`prefix` is where the network sits inside ComfyUI's BaseModel: ``diffusion_model.net.`` for the
OneStep SR default model ('Load OneStep SR Model' keeps FlowMapSRNet at diffusion_model.net),
``diffusion_model.`` for a native ComfyUI diffusion model.

PEFT format: a folder peft's ``PeftModel.from_pretrained(base, folder)`` reads: keys
``base_model.model.P.lora_A.weight`` / ``lora_B.weight`` and the LoraConfig as JSON.

Both carry the metadata key ``onestep_sr_lora``: base model, rank, alpha, target modules,
key prefix and the training recipe (plus kohya's ``ss_network_dim`` / ``ss_network_alpha``,
which LoRA browsers read).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import cast_adapter_dtype

from ..files.atomic import atomic_write
from ..files.tensors import load_tensors, save_tensors
from .formats import PEFT_CONFIG

ADAPTER = "default"  # peft's adapter name; one adapter per network
METADATA_KEY = "onestep_sr_lora"
FILE_FORMATS = ("comfy", "peft")
# Where FlowMapSRNet sits in the ComfyUI model that bridge/default_model.py builds.
COMFY_DEFAULT_MODEL_PREFIX = "diffusion_model.net."
PEFT_PREFIX = "base_model.model."
PEFT_WEIGHTS = "adapter_model.safetensors"
# The default model's residual-block convolutions and time projections (diffusers ResnetBlock2D names).
DEFAULT_TARGETS = ("conv1", "conv2", "time_emb_proj")
# Attention and MLP Linear layers of ComfyUI's native diffusion models: FLUX (double blocks' qkv / proj /
# img_mlp / txt_mlp, single blocks' linear1 / linear2), SD3's MMDiT (qkv, proj, fc1, fc2) and the SD UNet's
# transformers (to_q / to_k / to_v / to_out.0, ff.net.0.proj, ff.net.2; Qwen-Image uses these names too).
NATIVE_TARGETS = ("qkv", "proj", "to_q", "to_k", "to_v", "to_out.0", "img_mlp.0", "img_mlp.2", "txt_mlp.0",
                  "txt_mlp.2", "linear1", "linear2", "fc1", "fc2", "net.2")
# Where add_lora records the requires_grad flags it overrides, for remove_lora.
BASE_REQUIRES_GRAD = "_onestep_sr_base_requires_grad"


@dataclass
class LoraSpec:
    """Shape of an adapter. alpha None means alpha = rank (scaling 1). target_modules are module
    name suffixes (peft's rule: "conv1" matches every module whose path ends in ".conv1")."""

    rank: int = 8
    alpha: float | None = None
    target_modules: tuple[str, ...] = field(default=DEFAULT_TARGETS)
    dropout: float = 0.0

    def __post_init__(self):
        self.target_modules = tuple(self.target_modules)
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be positive (or None for alpha = rank), got {self.alpha}")
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            raise ValueError(f"target_modules must be a non-empty list of module names, got {self.target_modules!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must lie in [0, 1), got {self.dropout}")

    @property
    def scaling(self) -> float:
        return (self.rank if self.alpha is None else self.alpha) / self.rank

    def peft_config(self) -> LoraConfig:
        return LoraConfig(r=self.rank, lora_alpha=self.rank if self.alpha is None else self.alpha,
                          target_modules=list(self.target_modules), lora_dropout=self.dropout)


def add_lora(net: torch.nn.Module, spec: LoraSpec) -> torch.nn.Module:
    """Inject a fresh peft LoRA (B = 0: the network's output is unchanged) into `net` in place and
    freeze everything else; returns `net`. The adapter's weights are float32 whatever the base's
    dtype (peft's own autocast rule: AdamW steps vanish in bf16); `remove_lora` undoes it all."""
    if lora_layers(net):
        raise ValueError("the network already has LoRA layers; add_lora takes a plain base network")
    flags = [(p, p.requires_grad) for p in net.parameters()]
    net.requires_grad_(False)
    try:
        inject_adapter_in_model(spec.peft_config(), net, adapter_name=ADAPTER)
    except ValueError as err:
        for p, flag in flags:
            p.requires_grad_(flag)
        names = sorted({name.rsplit(".", 1)[-1] for name, m in net.named_modules()
                        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))})
        raise ValueError(f"LoRA target_modules {list(spec.target_modules)} match no layer of "
                         f"{type(net).__name__} ({err}); layer names it has: {names}") from None
    cast_adapter_dtype(net, ADAPTER)
    setattr(net, BASE_REQUIRES_GRAD, flags)
    return net


def remove_lora(net: torch.nn.Module) -> torch.nn.Module:
    """Undo `add_lora` in place: every peft LoRA layer is swapped back for the layer it wraps and the
    parameters get back the requires_grad flags they had; returns `net` (e.g. a live ComfyUI model
    after training, which must leave the user's MODEL as it was)."""
    layers = lora_layers(net)
    if not layers:
        raise ValueError("the network has no LoRA layers: nothing to remove")
    for name, layer in layers.items():
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent), child, layer.get_base_layer())
    for p, flag in net.__dict__.pop(BASE_REQUIRES_GRAD, ()):
        p.requires_grad_(flag)
    net.__dict__.pop("peft_config", None)  # set by peft's inject_adapter_in_model
    return net


def lora_layers(net: torch.nn.Module) -> dict[str, LoraLayer]:
    """{module path: peft LoRA layer} of the adapter this module manages."""
    return {name: module for name, module in net.named_modules()
            if isinstance(module, LoraLayer) and ADAPTER in module.lora_A}


def lora_weights(net: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """{module path: (A, B, alpha)} with peft's A (down) and B (up) weights; alpha is stated so
    that alpha / rank is the layer's scaling at strength 1 (rsLoRA included)."""
    out = {}
    for name, layer in lora_layers(net).items():
        rank = layer.r[ADAPTER]
        scaling = layer.lora_alpha[ADAPTER] / (rank ** 0.5 if layer.use_rslora.get(ADAPTER) else rank)
        out[name] = (layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight, scaling * rank)
    if not out:
        raise ValueError("the network has no LoRA layers (call add_lora first)")
    return out


def set_strength(net: torch.nn.Module, strength: float) -> None:
    """Scale every adapter's contribution by `strength` (ComfyUI's LoRA strength); 1 restores it."""
    for layer in lora_layers(net).values():
        layer.set_scale(ADAPTER, strength)


@contextlib.contextmanager
def adapters_disabled(net: torch.nn.Module):
    """Run `net` as its frozen base network (LoRA off), e.g. as a discriminator backbone."""
    layers = list(lora_layers(net).values())
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield net
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def comfy_state_dict(net: torch.nn.Module, prefix: str = COMFY_DEFAULT_MODEL_PREFIX) -> dict[str, torch.Tensor]:
    """The adapter under ComfyUI's LoRA key names (see the module docstring)."""
    out = {}
    for name, (down, up, alpha) in lora_weights(net).items():
        out[f"{prefix}{name}.lora_down.weight"] = down.detach()
        out[f"{prefix}{name}.lora_up.weight"] = up.detach()
        out[f"{prefix}{name}.alpha"] = torch.tensor(float(alpha))
    return out


def peft_state_dict(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter under the key names PeftModel.save_pretrained writes."""
    out = {}
    for name, (down, up, _) in lora_weights(net).items():
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = down.detach()
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = up.detach()
    return out


def _metadata(spec: LoraSpec, file_format: str, prefix: str, extra: dict | None) -> dict:
    info = {"file_format": file_format, "key_prefix": prefix, **asdict(spec), **(extra or {})}
    info["target_modules"] = list(spec.target_modules)
    return {METADATA_KEY: info, "ss_network_dim": spec.rank,
            "ss_network_alpha": spec.rank if spec.alpha is None else spec.alpha}


def save_lora(path: str | os.PathLike, net: torch.nn.Module, spec: LoraSpec, file_format: str = "comfy",
              prefix: str = COMFY_DEFAULT_MODEL_PREFIX, metadata: dict | None = None,
              overwrite: bool = False) -> Path:
    """Write the adapter of `net` (atomically; never over an existing file unless `overwrite`).

    file_format "comfy": one .safetensors file with ComfyUI keys under `prefix`.
    file_format "peft":  a folder with adapter_model.safetensors and adapter_config.json.
    metadata: recorded under "onestep_sr_lora" (base model, its hash, the training recipe, ...).
    """
    if file_format not in FILE_FORMATS:
        raise ValueError(f"file_format must be one of {FILE_FORMATS}, got {file_format!r}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True or choose another name")
    meta = _metadata(spec, file_format, prefix if file_format == "comfy" else PEFT_PREFIX, metadata)
    if file_format == "comfy":
        if path.suffix != ".safetensors":
            raise ValueError(f"a ComfyUI LoRA file must end in .safetensors, got {path.name}")
        return save_tensors(path, comfy_state_dict(net, prefix), meta)
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / PEFT_WEIGHTS, peft_state_dict(net), meta)
    config = spec.peft_config().to_dict()
    config["target_modules"] = sorted(config["target_modules"])
    atomic_write(path / PEFT_CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2, default=str)))
    return path


def read_lora(path: str | os.PathLike) -> tuple[LoraSpec, dict[str, tuple[torch.Tensor, torch.Tensor]], dict]:
    """(spec, {module path: (A, B)}, metadata) of a file or folder written by `save_lora`."""
    path = Path(path)
    weights_path = path / PEFT_WEIGHTS if path.is_dir() else path
    if not weights_path.is_file():
        raise FileNotFoundError(f"no LoRA at {path} (expected a .safetensors file or a PEFT folder "
                                f"holding {PEFT_WEIGHTS})")
    tensors, metadata = load_tensors(weights_path)
    info = metadata.get(METADATA_KEY)
    if info is None:
        raise ValueError(f"{weights_path} has no {METADATA_KEY!r} metadata: it was not written by "
                         "onestep_sr.adapters.lora.save_lora (load other LoRA files with the "
                         "'Load SR Adapter' node)")
    prefix = info["key_prefix"]
    names = ((".lora_down.weight", ".lora_up.weight") if info["file_format"] == "comfy"
             else (".lora_A.weight", ".lora_B.weight"))
    weights = {}
    for key in tensors:
        if key.startswith(prefix) and key.endswith(names[0]):
            module = key[len(prefix):-len(names[0])]
            weights[module] = (tensors[key], tensors[f"{prefix}{module}{names[1]}"])
    spec = LoraSpec(rank=info["rank"], alpha=info["alpha"], target_modules=info["target_modules"],
                    dropout=info["dropout"])
    return spec, weights, metadata


def load_lora(net: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Inject the adapter stored at `path` into the plain base network `net`; returns `net`.

    Every stored module must exist in `net` with the stored shapes, and every LoRA layer the
    spec creates must be in the file: a clear error names what does not match.
    """
    spec, weights, _ = read_lora(path)
    add_lora(net, spec)
    copy_lora_weights(net, weights, path)
    return net


def copy_lora_weights(net: torch.nn.Module, weights: dict[str, tuple[torch.Tensor, torch.Tensor]],
                      source: str | os.PathLike) -> None:
    """Copy {module path: (A, B)} (`read_lora`'s) into the LoRA layers of `net`, which must be exactly the
    stored modules with the stored shapes: a clear error names what does not match (`source`, the file)."""
    layers = lora_layers(net)
    unknown = sorted(set(weights) - set(layers))
    missing = sorted(set(layers) - set(weights))
    if unknown or missing:
        raise ValueError(f"LoRA {source} does not fit {type(net).__name__}: modules not in the network "
                         f"{unknown[:8]}, adapted modules missing from the file {missing[:8]}; was it "
                         "trained on another base model, or with other target modules?")
    with torch.no_grad():
        for name, (down, up) in weights.items():
            layer = layers[name]
            for target, value, label in ((layer.lora_A[ADAPTER].weight, down, "A"),
                                         (layer.lora_B[ADAPTER].weight, up, "B")):
                if target.shape != value.shape:
                    raise ValueError(f"LoRA {source}: {name} {label} has shape {tuple(value.shape)}, the "
                                     f"network needs {tuple(target.shape)} (another rank?)")
                target.copy_(value)


def merged_lora(net: torch.nn.Module, path: str | os.PathLike, strength: float = 1.0) -> torch.nn.Module:
    """A copy of the plain network `net` with the adapter at `path` merged into its weights at
    `strength` (W + strength * alpha / rank * B A, as ComfyUI's LoRA loaders patch a MODEL): the
    same layers as `net`, so the adapter costs nothing at inference."""
    merged = load_lora(copy.deepcopy(net), path)
    set_strength(merged, strength)
    for layer in lora_layers(merged).values():
        layer.merge(adapter_names=[ADAPTER])
    return remove_lora(merged)
