"""'Load SR Adapter': released SR adapter files (adapters/formats.py) applied to a MODEL and its VAE
as ModelPatcher weight patches, or, for dual-branch layers, object patches."""

from __future__ import annotations

import copy
import logging
import os

import comfy.model_base
import comfy.patcher_extension
import folder_paths

from ..adapters.formats import (ADAPTER_FORMATS, PEFT_DEFAULT_ALPHA, DualBranchLoRA, detect_format, dual_branch_groups,
                                halves_modulate, peft_alpha, peft_config_beside, read_flowsr, to_comfy_lora,
                                with_dual_branch)
from ..adapters.dual_lora import PATCH_SPLIT, dual_branch_info
from ..files.tensors import read_safetensors
from .adapter_keys import AdapterReport, build_patches, resolve, unet_key_map, vae_key_map, weight_shapes
from .dual_branch import check_dual_branch_loras, dual_patch_family, family_of
from .dual_branch_lora import DUAL_LORA_FAMILIES, layer_kind, patch_split

LORA_FOLDER = "loras"
MODULATION_LAYER = ".img_mod.1"  # Qwen-Image's image-stream modulation (takes the time embedding)
DUAL_CHECK = "onestep_sr_dual_branch"


def patched_vae(vae, patches: dict, strength: float):
    """A VAE sharing `vae`'s first-stage model whose own patcher carries `patches`."""
    out = copy.copy(vae)
    out.patcher = vae.patcher.clone()
    out.patcher.add_patches(patches, strength)
    return out


def dual_branch_patches(model_patcher, groups: dict, key_map: dict, strength: float, noise_scale: float,
                        condition_scale: float, report: AdapterReport, by_patch: bool = False):
    """A clone of the model whose targeted linear layers carry the dual-branch LoRAs (object patches).
    by_patch: the file splits its layers the way the Dual-Branch Patch lays out the tokens (a file Train SR
    LoRA wrote: bridge/dual_branch_lora.py), else by ODTSR's halves rule."""
    out = model_patcher.clone()
    weights = weight_shapes(model_patcher.model)
    family = family_of(model_patcher.get_model_object("diffusion_model")) if by_patch else None
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
        split = None
        if by_patch:
            layer = path.removeprefix("diffusion_model.")
            kind = layer_kind(family, layer)
            if kind is None:
                report.problems.append(f"module {module}: a dual-branch LoRA cannot split this layer by token")
                continue
            split = patch_split(kind, layer)
        lora = DualBranchLoRA(parts, strength * noise_scale, strength * condition_scale, split)
        out.add_object_patch(path, with_dual_branch(model_patcher.get_model_object(path), lora))
        if path.endswith(MODULATION_LAYER) and not by_patch:  # its block must modulate each token half with its own row
            block = path[:-len(MODULATION_LAYER)]
            out.add_object_patch(f"{block}._modulate", halves_modulate(model_patcher.get_model_object(block)._modulate))
        count += 1
    report.applied["MODEL (dual-branch)"] = count
    if isinstance(model_patcher.model, comfy.model_base.QwenImage) and not by_patch:
        comfy.patcher_extension.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, DUAL_CHECK,
                                                     _needs_one_reference, out.model_options, is_model_options=True)
    return out


def check_patch_split_family(model_patcher, name: str) -> None:
    family = family_of_or_none(model_patcher)
    if family not in DUAL_LORA_FAMILIES:
        raise ValueError(f"Load SR Adapter: {name} is a dual-branch LoRA Train SR LoRA made on the Dual-Branch Patch "
                         f"of FLUX.1, SD3, Qwen-Image or Lumina 2; this MODEL is none of those")


def family_of_or_none(model_patcher):
    try:
        return family_of(model_patcher.get_model_object("diffusion_model"))
    except ValueError:
        return None


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
        info = dual_branch_info(metadata)
        by_patch = info is not None and info.get("split") == PATCH_SPLIT
        family = dual_patch_family(model)
        if family is not None:
            check_dual_branch_loras(family, not by_patch)
        if by_patch:  # Train SR LoRA's file: its own branch scalings, for the Dual-Branch Patch of any family
            check_patch_split_family(model, report.name)
            noise_scale, condition_scale = float(info["noise_scale"]), float(info["condition_scale"])
            report.notes.append(f"branch scalings from the file: noise {noise_scale:g}, condition "
                                f"{condition_scale:g} (the branch-scale inputs apply to files without them)")
        out_model = dual_branch_patches(model, groups, key_map, strength, noise_scale, condition_scale, report,
                                        by_patch)
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
