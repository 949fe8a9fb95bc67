"""Mapping an adapter file's module names onto a ComfyUI model and turning its tensors into
ModelPatcher weight patches: ComfyUI's own LoRA key map, plus bare module paths, diffusers UNet
names and diffusers / DiffSynth VAE names; unknown keys and mismatched shapes are named."""

from __future__ import annotations

import comfy.diffusers_convert
import comfy.lora
import comfy.utils
import comfy.weight_adapter
import torch

from ..adapters.formats import wan_vae_name

# Prefixes that training scripts put before a network's module paths.
KNOWN_PREFIXES = ("base_model.model.", "unet.", "transformer.", "pipe.dit.", "dit.", "model.diffusion_model.",
                  "diffusion_model.", "vae.", "first_stage_model.", "pipe.new_vae.", "model.")
SHOWN_PROBLEMS = 12


def unet_key_map(model_patcher) -> dict:
    """{name a LoRA file may use for a module: the model weight key (or (key, offset))}."""
    model = model_patcher.model
    key_map = comfy.lora.model_lora_keys_unet(model, {})
    for key in model.state_dict():
        if key.startswith("diffusion_model.") and key.endswith(".weight"):
            bare = key[len("diffusion_model."):-len(".weight")]
            key_map.setdefault(bare, key)
            if bare.startswith("net."):  # the OneStep SR default model keeps its network at diffusion_model.net
                key_map.setdefault(bare[len("net."):], key)
    for diffusers, ldm in comfy.utils.unet_to_diffusers(model.model_config.unet_config).items():
        if diffusers.endswith(".weight"):  # plain diffusers UNet module paths (peft on UNet2DConditionModel)
            key_map.setdefault(diffusers[:-len(".weight")], f"diffusion_model.{ldm}")
    return key_map


def vae_key_map(vae) -> dict:
    """Module paths of the VAE's first-stage model -> weight keys (relative to vae.patcher.model)."""
    return {key[:-len(".weight")]: key for key in vae.patcher.model.state_dict() if key.endswith(".weight")}


def diffusers_vae_name(module: str) -> str:
    """A diffusers AutoencoderKL module path in ComfyUI's (ldm) VAE naming."""
    (converted,) = comfy.diffusers_convert.convert_vae_state_dict({f"{module}.weight": torch.zeros(1, 1)})
    return converted[:-len(".weight")]


def _stripped(name: str) -> list[str]:
    names = [name]
    while True:
        prefix = next((p for p in KNOWN_PREFIXES if names[-1].startswith(p)), None)
        if prefix is None:
            return names
        names.append(names[-1][len(prefix):])


def resolve(module: str, key_map: dict, vae: bool = False) -> str | None:
    """The key_map name of a file's module name: as is, without known prefixes, with ComfyUI's
    "transformer." (diffusers DiT names), or (VAE) converted from diffusers SD names or from
    DiffSynth's Qwen-Image VAE names (ODTSR's encoder) to ComfyUI's WanVAE."""
    for name in _stripped(module):
        candidates = [name, f"transformer.{name}"] + ([diffusers_vae_name(name), wan_vae_name(name)] if vae else [])
        for candidate in candidates:
            if candidate in key_map:
                return candidate
    return None


def split_key(key: str, key_map: dict, vae: bool = False) -> tuple[str | None, str]:
    """(key_map name, rest) for a file key: the longest leading part naming a module."""
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        name = resolve(".".join(parts[:end]), key_map, vae)
        if name is not None:
            return name, ".".join(parts[end:])
    return None, key


class AdapterReport:
    """What an adapter did to a model: counts per target and problems named by key."""

    def __init__(self, name: str, file_format: str):
        self.name, self.format = name, file_format
        self.applied: dict[str, int] = {}
        self.problems: list[str] = []
        self.notes: list[str] = []

    def text(self) -> str:
        lines = [f"{self.name}: format {self.format}"]
        lines += [f"  {target}: {count} modules patched" for target, count in self.applied.items()]
        lines += [f"  {note}" for note in self.notes]
        if self.problems:
            lines.append(f"  {len(self.problems)} problem(s):")
            lines += [f"    {p}" for p in self.problems[:SHOWN_PROBLEMS]]
            if len(self.problems) > SHOWN_PROBLEMS:
                lines.append(f"    ... and {len(self.problems) - SHOWN_PROBLEMS} more")
        return "\n".join(lines)


def _expected_shape(weight_shape, target) -> tuple:
    # (key, (dim, start, length)[, function]): a slice of a fused weight; (key, None, function): the whole
    # weight through a function (SD3's final / last context adaLN rows, diffusers' scale-shift order swapped)
    if isinstance(target, tuple) and target[1] is not None:
        shape = list(weight_shape)
        shape[target[1][0]] = target[1][2]
        return tuple(shape)
    return tuple(weight_shape)


def _shape_problem(target, patch, weight_shape) -> str | None:
    """A message when a LoRA's matrices cannot form the target weight, else None."""
    expected = _expected_shape(weight_shape, target)
    key = target[0] if isinstance(target, tuple) else target
    if isinstance(patch, comfy.weight_adapter.LoRAAdapter):
        up, down, mid = patch.weights[0], patch.weights[1], patch.weights[3]
        if mid is not None or patch.weights[5] is not None:
            return None  # LoCon mid / reshaped weights: ComfyUI checks these itself
        out_features, in_features = expected[0], int(torch.Size(expected[1:]).numel())
        if up.shape[0] != out_features or down.flatten(1).shape[1] != in_features or up.shape[1] != down.shape[0]:
            return (f"shape mismatch at {key}: LoRA up {tuple(up.shape)} x down {tuple(down.shape)} cannot make the "
                    f"weight {expected}")
    elif isinstance(patch, tuple) and patch[0] in ("diff", "set") and tuple(patch[1][0].shape) != expected:
        return f"shape mismatch at {key}: {patch[0]} tensor {tuple(patch[1][0].shape)}, weight {expected}"
    return None


def build_patches(tensors: dict[str, torch.Tensor], key_map: dict, weights: dict[str, torch.Size],
                  report: AdapterReport, vae: bool = False) -> dict:
    """ModelPatcher patches for a LoRA state dict (any key style ComfyUI or peft uses) and for full
    weights ("<module>.weight" / ".bias" replace the module's); problems are named in `report`."""
    lora, lora_names, patches = {}, {}, {}
    for key, value in tensors.items():
        name, rest = split_key(key, key_map, vae)
        if name is None:
            report.problems.append(f"unknown key {key}: no module of this model is named like it")
            continue
        target = key_map[name]
        base = target[0] if isinstance(target, tuple) else target
        if rest in ("weight", "base_layer.weight", "bias", "base_layer.bias"):  # a full tensor replaces the model's
            weight_key = base if rest.endswith("weight") else base[:-len("weight")] + "bias"
            if weight_key not in weights:
                report.problems.append(f"unknown key {key}: the model has no {weight_key}")
                continue
            patches[weight_key] = ("set", (value,))
            continue
        lora[f"{name}.{rest}"] = value
        lora_names.setdefault(name, []).append(key)
    loaded = comfy.lora.load_lora(lora, {name: key_map[name] for name in lora_names}, log_missing=False)
    for name, keys in lora_names.items():
        if key_map[name] not in loaded:
            report.problems.append(f"keys {keys} name {name} but are not a LoRA layout ComfyUI reads")
    patches.update(loaded)
    for target, patch in list(patches.items()):
        key = target[0] if isinstance(target, tuple) else target
        problem = (f"unknown module: a LoRA of the file maps to {key}, which this model does not have"
                   if key not in weights else _shape_problem(target, patch, weights[key]))
        if problem:
            report.problems.append(problem)
            del patches[target]
    return patches


def weight_shapes(module) -> dict[str, torch.Size]:
    return {key: value.shape for key, value in module.state_dict().items()}
