"""FluxSR's flow trajectory distillation as nodes: the teacher's (noise, image) pairs, and the FTD LoRA
trained on them (bridge/teacher_pairs.py and bridge/ftd_training.py do the work)."""

from __future__ import annotations

from ..bridge.ftd_training import train_ftd_lora
from ..bridge.teacher_pairs import SAMPLER_NAME, SCHEDULER, teacher_pairs


class OneStepSRTeacherPairs:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The teacher: your native flow model (FLUX, SD3, Qwen-Image, ...)."}),
            "vae": ("VAE", {"tooltip": "Its VAE (decodes each image to make its LR latent)."}),
            "positive": ("CONDITIONING", {"tooltip": "The teacher's prompt (as for KSampler)."}),
            "negative": ("CONDITIONING", {"tooltip": "The teacher's negative prompt (as for KSampler)."}),
            "latent": ("LATENT", {"tooltip": "The empty latent of the pairs' size (e.g. EmptySD3LatentImage)."}),
            "name": ("STRING", {"default": "ftd_teacher", "tooltip": "Folder name under output/onestep_sr_teacher_pairs/."}),
            "count": ("INT", {"default": 64, "min": 1, "max": 1000000, "tooltip": "Pairs to have in the folder (a rerun adds the missing ones)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**48, "tooltip": "Pair i is KSampler's result with seed + i."}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000, "tooltip": "The teacher's sampling steps."}),
            "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": "As KSampler's cfg (FLUX: 1)."}),
            "sampler_name": SAMPLER_NAME,
            "scheduler": SCHEDULER,
            "scale": ("INT", {"default": 4, "min": 1, "max": 16, "tooltip": "Downscale factor of the LR made from each image."}),
        }}

    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("pairs", "report")
    FUNCTION = "write"
    OUTPUT_NODE = True
    CATEGORY = "OneStep SR/training"
    DESCRIPTION = ("Samples (noise, image) pairs with your model as KSampler would, plus each image's LR latent, into "
                   "output/onestep_sr_teacher_pairs/<name>/ for FTD training. Resumable; a folder written with "
                   "other settings is refused.")

    def write(self, **kwargs):
        return teacher_pairs(**kwargs)


class OneStepSRTrainFTDLoRA:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The native flow model the SR LoRA adapts (the teacher's model)."}),
            "pairs": ("STRING", {"default": "ftd_teacher", "tooltip": "A folder name under output/onestep_sr_teacher_pairs/ (Teacher Pairs' output)."}),
            "lora_name": ("STRING", {"default": "onestep_sr_ftd", "tooltip": "File name in models/loras/."}),
            "steps": ("INT", {"default": 500, "min": 1, "max": 1000000, "tooltip": "Optimizer steps (a rerun resumes)."}),
            "batch_size": ("INT", {"default": 4, "min": 1, "max": 256, "tooltip": "Pairs per optimizer step."}),
            "rank": ("INT", {"default": 16, "min": 1, "max": 256, "tooltip": "LoRA rank."}),
            "learning_rate": ("FLOAT", {"default": 1e-4, "min": 1e-7, "max": 1e-1, "step": 1e-5, "tooltip": "AdamW learning rate."}),
            "lr_time": ("FLOAT", {"default": 0.5, "min": 0.01, "max": 0.99, "step": 0.01, "tooltip": "T_L: the sigma the LR latent sits at (sample the LoRA in one step from it)."}),
            "sign": (["+1", "-1"], {"default": "+1", "tooltip": "σ in v_φ = (v_θ - σ (1 - T_L) u) / T_L: +1 is the identity, -1 the other reading of FluxSR's figure."}),
            "diversification_weight": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip": "Weight of FluxSR's attention-diversification loss (0: off)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seed of the batches and initial weights."}),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing LoRA file of that name."}),
        }, "optional": {
            "positive": ("CONDITIONING", {"tooltip": "The prompt the LoRA will upscale with (needed by text models)."}),
            "alpha": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1024.0, "step": 0.5, "tooltip": "LoRA alpha; 0 means alpha = rank."}),
            "target_modules": ("STRING", {"default": "", "tooltip": "Comma-separated module-name suffixes; empty: attention and MLP layers."}),
            "diversification_blocks": ("STRING", {"default": "double_blocks.0,single_blocks.0", "tooltip": "Blocks whose tokens the diversification term spreads (module-name suffixes)."}),
            "lr_fraction": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "Share of each batch trained exactly at T_L (the rest between T_L and 1)."}),
            "gradient_checkpointing": ("BOOLEAN", {"default": False, "tooltip": "Recompute the transformer blocks' activations in the backward pass: less memory, one more forward (FLUX's double blocks are left out)."}),
        }}

    RETURN_TYPES = ("MODEL", "IMAGE", "STRING")
    RETURN_NAMES = ("model", "loss_plot", "report")
    FUNCTION = "train"
    OUTPUT_NODE = True
    CATEGORY = "OneStep SR/training"
    DESCRIPTION = ("Trains a one-step SR LoRA by flow trajectory distillation (FluxSR) from teacher pairs; no teacher or "
                   "discriminator in memory. Saves it into models/loras/; interrupting keeps the last checkpoint.")

    def train(self, **kwargs):
        return train_ftd_lora(**kwargs)
