"""SR adapters in ComfyUI: 'Load SR Adapter' applies released SR LoRA files to a MODEL (and VAE);
'Train SR LoRA' trains one adversarially (training/adversarial.py) and saves it into loras/.

The file formats and the dual-branch layer maths live in training/adapter_formats.py; this module
only maps the file's module names onto the ComfyUI model (ComfyUI's own LoRA key map, plus the
bare module paths, diffusers UNet names and diffusers VAE names) and turns them into ModelPatcher
weight patches (or, for dual-branch layers, object patches)."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
from functools import partial
from pathlib import Path

import comfy.diffusers_convert
import comfy.lora
import comfy.model_base
import comfy.model_management
import comfy.patcher_extension
import comfy.pixel_space_convert
import comfy.sd
import comfy.utils
import comfy.weight_adapter
import folder_paths
import numpy as np
import torch
from PIL import Image

from ..training.adapter_formats import (ADAPTER_FORMATS, PEFT_DEFAULT_ALPHA, DualBranchLoRA, detect_format,
                                        dual_branch_groups, halves_modulate, peft_alpha, peft_config_beside,
                                        read_flowsr, read_safetensors, to_comfy_lora, wan_vae_name, with_dual_branch)
from ..training.adversarial import DISCRIMINATORS, AdversarialLoRA, AdversarialLoRATrainer
from ..training.lora import COMFY_DEFAULT_MODEL_PREFIX, DEFAULT_TARGETS, NATIVE_TARGETS, LoraSpec
from ..training.sr_data import ImageCrops, sr_batches
from ..training.trainer import LOSS_CURVE_NAME, TrainConfig
from .comfy_glue import model_info
from .default_model_node import is_default_model
from .native_training import CONSISTENCY, LORA_KEY_PREFIX, native_lora_trainer

CATEGORY = "OneStep SR/loaders"
LORA_FOLDER = "loras"
# Prefixes that training scripts put before a network's module paths.
KNOWN_PREFIXES = ("base_model.model.", "unet.", "transformer.", "pipe.dit.", "dit.", "model.diffusion_model.",
                  "diffusion_model.", "vae.", "first_stage_model.", "pipe.new_vae.", "model.")
MODULATION_LAYER = ".img_mod.1"
DUAL_CHECK = "onestep_sr_dual_branch"  # Qwen-Image's image-stream modulation (takes the time embedding)
SHOWN_PROBLEMS = 12


# ---------------------------------------------------------------- key maps


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


# ---------------------------------------------------------------- patches


class AdapterReport:
    """What an adapter did to a model: counts per target and problems named by key."""

    def __init__(self, name: str, file_format: str):
        self.name, self.format = name, file_format
        self.applied: dict[str, int] = {}
        self.problems: list[str] = []

    def text(self) -> str:
        lines = [f"{self.name}: format {self.format}"]
        lines += [f"  {target}: {count} modules patched" for target, count in self.applied.items()]
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


def patched_vae(vae, patches: dict, strength: float):
    """A VAE sharing `vae`'s first-stage model whose own patcher carries `patches`."""
    out = copy.copy(vae)
    out.patcher = vae.patcher.clone()
    out.patcher.add_patches(patches, strength)
    return out


def dual_branch_patches(model_patcher, groups: dict, key_map: dict, strength: float, noise_scale: float,
                        condition_scale: float, report: AdapterReport):
    """A clone of the model whose targeted linear layers carry the dual-branch LoRAs (object patches)."""
    out = model_patcher.clone()
    weights = weight_shapes(model_patcher.model)
    count = 0
    for module, parts in groups.items():
        name = resolve(module, key_map)
        target = key_map.get(name) if name else None
        if not isinstance(target, str):
            report.problems.append(f"unknown module {module}: " + ("it is part of a fused weight, which dual-branch "
                                                                    "LoRA cannot patch" if target else
                                                                    "no module of this model is named like it"))
            continue
        out_features, in_features = weights[target][0], weights[target][1:].numel()
        shapes = {part: tuple(t.shape) for part, t in parts.items()}
        if any(shapes[f"lora_A{b}"][1] != in_features or shapes[f"lora_B{b}"][0] != out_features
               or shapes[f"lora_B{b}"][1] != shapes[f"lora_A{b}"][0] for b in (1, 2)):
            report.problems.append(f"shape mismatch at {target}: dual-branch parts {shapes}, weight "
                                   f"{tuple(weights[target])}")
            continue
        path = target[:-len(".weight")]
        lora = DualBranchLoRA(parts, strength * noise_scale, strength * condition_scale)
        out.add_object_patch(path, with_dual_branch(model_patcher.get_model_object(path), lora))
        if path.endswith(MODULATION_LAYER):  # its block must modulate each token half with its own row
            block = path[:-len(MODULATION_LAYER)]
            out.add_object_patch(f"{block}._modulate", halves_modulate(model_patcher.get_model_object(block)._modulate))
        count += 1
    report.applied["MODEL (dual-branch)"] = count
    if isinstance(model_patcher.model, comfy.model_base.QwenImage):
        comfy.patcher_extension.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, DUAL_CHECK,
                                                     _needs_one_reference, out.model_options, is_model_options=True)
    return out


def _needs_one_reference(executor, x, *args, **kwargs):
    """Qwen-Image forward wrapper: dual-branch layers split the image tokens in halves, so the model
    must get exactly one reference latent (the LR latent) of the latent's own size."""
    references = args[4] if len(args) > 4 else kwargs.get("ref_latents")  # (t, context, mask, guidance, ref_latents)
    if not references or len(references) != 1 or references[0].shape[-2:] != x.shape[-2:]:
        shapes = [tuple(r.shape) for r in references or []]
        raise ValueError(f"a dual-branch SR adapter needs exactly one reference latent of the latent's size "
                         f"{tuple(x.shape[-2:])} (its condition tokens), got {shapes}: feed the LR latent to the model "
                         "with a ReferenceLatent node")
    return executor(x, *args, **kwargs)


# ---------------------------------------------------------------- loading


def load_sr_adapter(model, path: str, strength: float = 1.0, file_format: str = "auto", vae=None,
                    vae_path: str | None = None, vae_strength: float = 1.0, on_problem: str = "error",
                    noise_scale: float = 0.0, condition_scale: float = 1.0) -> tuple:
    """(MODEL, VAE, report text) with the adapter at `path` (and the VAE adapter at `vae_path`)."""
    tensors, metadata = read_safetensors(path)
    detected = detect_format(tensors, metadata)
    file_format = detected if file_format == "auto" else file_format
    if file_format not in ADAPTER_FORMATS:
        raise ValueError(f"format must be 'auto' or one of {ADAPTER_FORMATS}, got {file_format!r}")
    report = AdapterReport(os.path.basename(path), file_format)
    key_map = unet_key_map(model)
    model_weights = weight_shapes(model.model)
    vae_tensors = {}
    if file_format == "flowsr":
        checkpoint = read_flowsr(tensors, metadata)
        fields = checkpoint.fields
        alpha = {"unet": float(fields.get("unet_lora_alpha", PEFT_DEFAULT_ALPHA)),
                 "vae": float(fields.get("vae_lora_alpha", PEFT_DEFAULT_ALPHA))}
        unet_tensors, adapters = to_comfy_lora(checkpoint.unet, lambda m, r: alpha["unet"])
        vae_tensors, _ = to_comfy_lora(checkpoint.vae, lambda m, r: alpha["vae"])
        model_tensors = unet_tensors
    elif file_format == "dual_branch":
        groups, others = dual_branch_groups(tensors)
        model_tensors = {}
        vae_tensors = {k: tensors[k] for k in others if k.startswith("pipe.new_vae.")}
        report.problems += [f"unknown key {k}: not a dual-branch LoRA part" for k in others if k not in vae_tensors]
        adapters = []
    else:
        config = peft_config_beside(path)
        model_tensors, adapters = to_comfy_lora(tensors, lambda m, r: peft_alpha(config, m, r))
    if len(adapters) > 1:
        raise ValueError(f"{report.name} holds several peft adapters {adapters}; save one adapter per file")

    out_model = model
    if file_format == "dual_branch":
        out_model = dual_branch_patches(model, groups, key_map, strength, noise_scale, condition_scale, report)
    if model_tensors:
        patches = build_patches(model_tensors, key_map, model_weights, report)
        out_model = out_model.clone()
        report.applied["MODEL"] = len(out_model.add_patches(patches, strength))
    if vae_path:
        extra, _ = read_safetensors(vae_path)
        extra, _ = to_comfy_lora(extra, lambda m, r: peft_alpha(peft_config_beside(vae_path), m, r))
        vae_tensors = {**vae_tensors, **extra}
    out_vae = vae
    if vae_tensors:
        if vae is None:
            report.problems.append(f"{report.name} carries a VAE-encoder adapter ({len(vae_tensors)} tensors): "
                                   "connect the model's VAE to apply it")
        else:
            patches = build_patches(vae_tensors, vae_key_map(vae), weight_shapes(vae.patcher.model), report, vae=True)
            out_vae = patched_vae(vae, patches, vae_strength)
            report.applied["VAE"] = len(patches)
    if report.problems and on_problem == "error":
        raise ValueError("Load SR Adapter: " + report.text() + "\nFix the file or the model, or set on_problem to "
                         "'report' to apply the rest")
    text = report.text()
    logging.info("OneStep SR: %s", text)
    return out_model, out_vae, text


def safetensors_loras() -> list[str]:
    return [name for name in folder_paths.get_filename_list(LORA_FOLDER) if name.lower().endswith((".safetensors", ".sft"))]


class OneStepSRLoadAdapter:
    @classmethod
    def INPUT_TYPES(cls):
        loras = safetensors_loras()
        return {"required": {
            "model": ("MODEL", {"tooltip": "The diffusion model the adapter was trained on."}),
            "adapter_name": (loras, {"tooltip": "An SR adapter from models/loras/ (.safetensors only): ComfyUI/kohya, "
                                                "diffusers/PEFT, FlowSR single-file or dual-branch (lora_A1/B1/A2/B2)."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.01,
                                   "tooltip": "LoRA strength (1 = as trained, 0 = the base model)."}),
            "format": (["auto", *ADAPTER_FORMATS], {"default": "auto",
                                                     "tooltip": "The file's layout; auto detects it from keys and metadata."}),
            "on_problem": (["error", "report"], {"default": "error",
                                                 "tooltip": "Unknown keys or mismatched shapes: stop with their names "
                                                            "(error), or apply the rest and list them in the report."}),
        }, "optional": {
            "vae": ("VAE", {"tooltip": "The model's VAE; adapters with a VAE-encoder part (FlowSR, TSD-SR, ODTSR) "
                                       "patch it."}),
            "vae_adapter_name": (["none", *loras], {"default": "none",
                                                    "tooltip": "A separate VAE-encoder LoRA file (e.g. TSD-SR's vae.safetensors)."}),
            "vae_strength": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.01,
                                       "tooltip": "Strength of the VAE-encoder adapter."}),
            "noise_branch_scale": ("FLOAT", {"default": 0.0, "min": -4.0, "max": 4.0, "step": 0.01,
                                             "tooltip": "Dual-branch only: scaling of the noise-token LoRA (A1/B1). "
                                                        "ODTSR trains it at 0."}),
            "condition_branch_scale": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.01,
                                                 "tooltip": "Dual-branch only: scaling of the condition-token LoRA "
                                                            "(A2/B2). ODTSR: 1."}),
        }}

    RETURN_TYPES = ("MODEL", "VAE", "STRING")
    RETURN_NAMES = ("model", "vae", "report")
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Applies a released SR adapter to a MODEL (and its VAE): ComfyUI/kohya and diffusers/PEFT LoRA, "
                   "FlowSR's single file with its VAE-encoder adapter, dual-branch LoRA (one adapter on noise "
                   "tokens, one on condition tokens). Unknown keys and mismatched shapes are named.")

    def load(self, model, adapter_name, strength, format, on_problem, vae=None, vae_adapter_name="none",
             vae_strength=1.0, noise_branch_scale=0.0, condition_branch_scale=1.0):
        path = folder_paths.get_full_path_or_raise(LORA_FOLDER, adapter_name)
        vae_path = None if vae_adapter_name == "none" else folder_paths.get_full_path_or_raise(LORA_FOLDER, vae_adapter_name)
        return load_sr_adapter(model, path, strength, format, vae, vae_path, vae_strength, on_problem,
                               noise_branch_scale, condition_branch_scale)


# ---------------------------------------------------------------- training


TRAINING_FOLDER = "onestep_sr_training"  # under ComfyUI's output folder: one run folder per LoRA name
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def hr_images(images: torch.Tensor | None, folder: str) -> list[torch.Tensor]:
    """[3, H, W] tensors in [0, 1] from an IMAGE batch and/or a folder (absolute, or under ComfyUI's input)."""
    out = [] if images is None else [image[..., :3].permute(2, 0, 1).float() for image in images]
    if folder.strip():
        path = Path(folder.strip())
        path = path if path.is_absolute() else Path(folder_paths.get_input_directory()) / path
        if not path.is_dir():
            raise ValueError(f"Train SR LoRA: folder {path} does not exist; give a folder of HR images (absolute, "
                             "or relative to ComfyUI's input folder)")
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"Train SR LoRA: {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        for file in files:
            array = np.asarray(Image.open(file).convert("RGB"), dtype=np.float32) / 255
            out.append(torch.from_numpy(array).permute(2, 0, 1))
    if not out:
        raise ValueError("Train SR LoRA: connect an IMAGE batch of HR images or name a folder of them")
    return out


def lora_output_path(name: str, overwrite: bool) -> Path:
    """models/loras/<name>.safetensors; an existing file is kept unless `overwrite`."""
    name = name.strip().removesuffix(".safetensors")
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"Train SR LoRA: lora_name must be a plain file name, got {name!r}")
    path = Path(folder_paths.get_folder_paths(LORA_FOLDER)[0]) / f"{name}.safetensors"
    if path.exists() and not overwrite:
        raise FileExistsError(f"Train SR LoRA: {path} exists; choose another lora_name or switch overwrite on")
    return path


def trainable_network(model, vae):
    """A copy of the MODEL's OneStep SR network (with the MODEL's own patches applied) to train on."""
    if not isinstance(vae.first_stage_model, comfy.pixel_space_convert.PixelspaceConversionVAE):
        raise ValueError("Train SR LoRA: the OneStep SR default model works in pixel space; connect the VAE that "
                         "'Load OneStep SR Model' returns")
    comfy.model_management.load_models_gpu([model])
    return copy.deepcopy(model.model.diffusion_model.net).float().cpu().train()


def state_sha256(net) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def default_model_trainer(model, vae, crops, spec, objective, config, batch_size, crop_size, scale,
                          real_degradation, discriminator, metadata):
    """The AdversarialLoRATrainer on a copy of the default model's network (pixel space)."""
    net = trainable_network(model, vae)
    probe = (torch.zeros(1, 3, crop_size, crop_size), torch.zeros(1, 3, crop_size, crop_size))
    yield AdversarialLoRATrainer(
        net, spec, objective,
        sr_batches(crops, batch_size, crop_size, real_degradation, net.source_noise, scales=(scale,)), config,
        probe=probe, discriminator=discriminator,
        metadata={**metadata, "family": net.family, "base_model": "OneStep SR default model (ComfyUI MODEL)",
                  "base_model_state_sha256": state_sha256(net)})


def lora_spec(model, rank: int, alpha: float, target_modules: str) -> LoraSpec:
    """The node's LoRA widgets as a LoraSpec: alpha 0 means alpha = rank; target_modules is a comma-separated
    list of module-name suffixes, empty for the model's defaults."""
    targets = tuple(name.strip() for name in target_modules.split(",") if name.strip())
    if not targets:
        targets = DEFAULT_TARGETS if is_default_model(model) else NATIVE_TARGETS
    return LoraSpec(rank=rank, alpha=alpha or None, target_modules=targets)


def train_sr_lora(model, vae, lora_name: str, steps: int, batch_size: int, crop_size: int, scale: int, rank: int,
                  learning_rate: float, adversarial_weight: float, discriminator: str, seed: int,
                  overwrite: bool = False, images=None, folder: str = "", real_degradation: float = 0.2,
                  positive=None, alpha: float = 0.0, target_modules: str = ""):
    """(MODEL with the trained LoRA, loss plot IMAGE, report). The run (checkpoints every tenth of
    the steps) lives in output/onestep_sr_training/<lora_name>/: an interrupted run keeps its last
    checkpoint and the same lora_name resumes it.

    The OneStep SR default model trains on a copy of its network in pixel space (flow-map consistency,
    an EMA); a native flow MODEL (FLUX, SD3, ...; nodes/native_training.py) in its latent space with the
    LoRA in its own diffusion model while it trains (flow-matching consistency, no EMA), with `positive`
    as its text conditioning."""
    if crop_size % scale:
        raise ValueError(f"Train SR LoRA: crop_size {crop_size} must be a multiple of scale {scale}")
    target = lora_output_path(lora_name, overwrite)
    crops = ImageCrops(hr_images(images, folder))
    spec = lora_spec(model, rank, alpha, target_modules)
    native = not is_default_model(model)
    run_dir = Path(folder_paths.get_output_directory()) / TRAINING_FOLDER / target.stem
    config = TrainConfig(output_dir=str(run_dir), steps=steps, seed=seed, lr=learning_rate,
                         ema_decay=None if native else 0.99, checkpoint_every=max(1, steps // 10), progress=False)
    objective = AdversarialLoRA(adversarial_weight=adversarial_weight, consistency_weight=0.25,
                                consistency=CONSISTENCY if native else model_info(model)["objective"])
    metadata = {"hr_images": len(crops.images), "batch": batch_size, "crop": crop_size, "scale": scale,
                "real_fraction": real_degradation}
    make_trainer = (partial(native_lora_trainer, model, vae, positive) if native
                    else partial(default_model_trainer, model, vae))
    progress = comfy.utils.ProgressBar(steps)
    # ComfyUI runs nodes under torch.inference_mode, in which nothing can be trained.
    with torch.inference_mode(False), make_trainer(crops, spec, objective, config, batch_size, crop_size, scale,
                                                   real_degradation, discriminator, metadata) as trainer:
        def step_hook():
            progress.update_absolute(trainer.trainer.step, steps)
            comfy.model_management.throw_exception_if_processing_interrupted()

        objective.step_hook = step_hook
        try:
            summary = trainer.train()
        except comfy.model_management.InterruptProcessingException:
            trainer.trainer.save_checkpoint()  # the steps done so far; the same lora_name resumes from here
            raise
        progress.update_absolute(steps, steps)
        # the adapter as trained (an EMA lags in short runs)
        trainer.export(target, prefix=LORA_KEY_PREFIX if native else COMFY_DEFAULT_MODEL_PREFIX, ema=False,
                       overwrite=overwrite)
    folder_paths.filename_list_cache.pop(LORA_FOLDER, None)
    plot = np.asarray(Image.open(run_dir / LOSS_CURVE_NAME).convert("RGB"), dtype=np.float32) / 255
    lora = comfy.utils.load_torch_file(str(target), safe_load=True)
    tuned, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    report = (f"saved {target} ({summary['step']} steps, last loss {summary['loss']:.4g}); run folder {run_dir}; "
              f"load it with 'Load LoRA' or 'Load SR Adapter'")
    return tuned, torch.from_numpy(plot)[None], report


class OneStepSRTrainLoRA:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model to adapt: the OneStep SR default model ('Load OneStep SR "
                                           "Model') or a native flow model (FLUX, SD3, Z-Image, Qwen-Image, SD2 "
                                           "patched with ModelSamplingSD3)."}),
            "vae": ("VAE", {"tooltip": "The model's VAE (pixel space for the default model)."}),
            "lora_name": ("STRING", {"default": "onestep_sr_adversarial", "tooltip": "File name in models/loras/."}),
            "steps": ("INT", {"default": 200, "min": 1, "max": 100000, "tooltip": "Optimizer steps (a rerun resumes)."}),
            "batch_size": ("INT", {"default": 4, "min": 1, "max": 256, "tooltip": "HR crops per optimizer step."}),
            "crop_size": ("INT", {"default": 96, "min": 16, "max": 1024, "step": 8,
                                  "tooltip": "HR crop side in pixels (a multiple of scale)."}),
            "scale": ("INT", {"default": 4, "min": 2, "max": 8, "tooltip": "Upscale factor the LR crops are made at."}),
            "rank": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "LoRA rank."}),
            "learning_rate": ("FLOAT", {"default": 2e-4, "min": 1e-6, "max": 1e-1, "step": 1e-5,
                                        "tooltip": "AdamW learning rate of the LoRA and the discriminator."}),
            "adversarial_weight": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 10.0, "step": 0.005,
                                             "tooltip": "Weight of the GAN term against L1 reconstruction and the "
                                                        "flow-map consistency term."}),
            "discriminator": (list(DISCRIMINATORS), {"default": "patch",
                                                     "tooltip": "features: light heads on the frozen base network; "
                                                                "patch: a small PatchGAN on the image."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1,
                             "tooltip": "Seed of the crops, degradations and initial weights (a run is reproducible)."}),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing LoRA file of that name."}),
        }, "optional": {
            "images": ("IMAGE", {"tooltip": "HR training images (each at least crop_size on both sides)."}),
            "folder": ("STRING", {"default": "", "tooltip": "A folder of HR images (absolute or under ComfyUI's input)."}),
            "real_degradation": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 1.0, "step": 0.05,
                                           "tooltip": "Share of batches degraded by the real-world chain instead of bicubic."}),
            "positive": ("CONDITIONING", {"tooltip": "Text conditioning of a native model (e.g. CLIPTextEncode of "
                                                     "the prompt it will upscale with); the default model takes none."}),
            "alpha": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1024.0, "step": 0.5,
                                "tooltip": "LoRA alpha (scaling alpha / rank); 0 means alpha = rank."}),
            "target_modules": ("STRING", {"default": "", "tooltip": "Comma-separated module-name suffixes to adapt "
                                                                    "(e.g. qkv, proj); empty: the model's attention "
                                                                    "and MLP layers."}),
        }}

    RETURN_TYPES = ("MODEL", "IMAGE", "STRING")
    RETURN_NAMES = ("model", "loss_plot", "report")
    FUNCTION = "train"
    OUTPUT_NODE = True
    CATEGORY = "OneStep SR/training"
    DESCRIPTION = ("Adversarially fine-tunes an SR LoRA (reconstruction + GAN + flow consistency) on HR images and "
                   "saves it into models/loras/. Interrupting keeps the last checkpoint; running again resumes.")

    def train(self, **kwargs):
        return train_sr_lora(**kwargs)
