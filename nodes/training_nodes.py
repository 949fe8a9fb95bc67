"""'Train SR LoRA': adversarial SR LoRA training as a node (bridge/training_runs.py does the work)."""

from __future__ import annotations

from ..bridge.training_runs import train_sr_lora
from ..bridge.widgets import DISCRIMINATOR


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
            "discriminator": DISCRIMINATOR,
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1,
                             "tooltip": "Seed of the crops, degradations and initial weights (a run is reproducible)."}),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing LoRA file of that name."}),
        }, "optional": {
            "images": ("IMAGE", {"tooltip": "HR training images (each at least crop_size on both sides; grey is "
                                            "expanded to RGB, alpha dropped)."}),
            "folder": ("STRING", {"default": "", "tooltip": "A folder of HR images inside ComfyUI's input folder (its name there, "
                                                            "or its absolute path)."}),
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
