"""Loader nodes: the OneStep SR default model, and released SR adapters applied to a MODEL and VAE."""

from __future__ import annotations

import folder_paths

from ..bridge.adapter_loading import LORA_FOLDER, load_sr_adapter, safetensors_loras
from ..bridge.default_model import FOLDER, load_default_model
from ..bridge.dual_branch import dual_branch_patch
from ..bridge.widgets import ADAPTER_FORMAT

CATEGORY = "OneStep SR/loaders"


class OneStepSRLoadModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (folder_paths.get_filename_list(FOLDER), {
                "tooltip": "A OneStep SR model from models/onestep_sr/ (the shipped default model is always listed)."}),
        }}

    RETURN_TYPES = ("MODEL", "VAE")
    RETURN_NAMES = ("model", "vae")
    FUNCTION = "load"
    CATEGORY = "OneStep SR/loaders"
    DESCRIPTION = ("Loads the OneStep SR default model: a small pixel-space flow-map SR network that runs on a "
                   "CPU, one model for x4 and x8. Use it with 'OneStep SR Upscale' or the sampler nodes.")

    def load(self, model_name):
        path = folder_paths.get_full_path(FOLDER, model_name)
        if path is None:
            raise ValueError(f"OneStep SR model '{model_name}' is not in models/{FOLDER}/; put the .safetensors "
                             "file there and refresh")
        return load_default_model(path)

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
            "format": ADAPTER_FORMAT,
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
                                                        "ODTSR trains it at 0. Files from Train SR LoRA carry "
                                                        "their own scalings (this input is then unused)."}),
            "condition_branch_scale": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.01,
                                                 "tooltip": "Dual-branch only: scaling of the condition-token LoRA "
                                                            "(A2/B2). ODTSR: 1. Files from Train SR LoRA carry "
                                                            "their own scalings."}),
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


class OneStepSRDualBranchPatch:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "A native FLUX.1, SD3, Qwen-Image or Lumina 2 / Z-Image MODEL (from Load Diffusion Model)."}),
        }}

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "patch"
    CATEGORY = CATEGORY
    DESCRIPTION = ("TEASR's dual-branch transformer with a decoupled timestep: the LR latent's tokens join the "
                   "noise tokens at the same positions, a second time embedder (a copy of the first) takes the "
                   "jump's target time s for the noise tokens while the LR tokens and the text keep the current "
                   "time t. At s = t it is the base model. Sample it with family 'dual_branch' (or 'auto'); load "
                   "dual-branch LoRAs after it; Train SR LoRA trains it.")

    def patch(self, model):
        return (dual_branch_patch(model),)
