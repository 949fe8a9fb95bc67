"""Tiny, randomly initialised native ComfyUI models for tests: no downloads, milliseconds per step on CPU.

Each model is built from ComfyUI's own classes (comfy.supported_models + comfy.model_base) and wrapped in
a comfy.model_patcher.ModelPatcher the way comfy.sd.load_diffusion_model_state_dict wraps a loaded file, so
it behaves like a MODEL from ComfyUI's loaders. The SD3 and SD2 models are also written as .safetensors
files whose layout ComfyUI's model detection recognises, so stock UNETLoader loads them by file name; FLUX
cannot be (ComfyUI's detection fixes FLUX's head layout, which forces 3072 channels), so FLUX reaches
prompts through the test node `TinyModel` below, as do Qwen-Image and Lumina 2 / Z-Image (no files written). The tiny VAE is a TAESD (ComfyUI loads any file with
`taesd_decoder.*` keys as a TAESD VAE), with 4 latent channels for SD2 and 16 for FLUX/SD3.

The module doubles as a ComfyUI custom-node file (NODE_CLASS_MAPPINGS at the bottom) so that prompts, in
process or on a real server, can ask for a tiny model or conditioning by family name. ComfyUI modules are
imported inside functions: the module is imported by pytest before the host is set up.
"""

import hashlib

import torch

# latent channels, and the dimensions the conditioning must have
FAMILIES = {
    "flux": {"latent_channels": 16, "context_dim": 32, "pooled_dim": 32},
    "sd3": {"latent_channels": 16, "context_dim": 32, "pooled_dim": 32},
    "sd35": {"latent_channels": 16, "context_dim": 32, "pooled_dim": 32},  # SD3.5-medium: x-block self-attention
    "sd2": {"latent_channels": 4, "context_dim": 1024, "pooled_dim": None},
    "sd2_v": {"latent_channels": 4, "context_dim": 1024, "pooled_dim": None},
    "qwen_image": {"latent_channels": 16, "context_dim": 32, "pooled_dim": None},
    "lumina2": {"latent_channels": 16, "context_dim": 32, "pooled_dim": None},
}
# files that write_model_files() puts under models/diffusion_models and models/vae
MODEL_FILES = {"sd3": "tiny_sd3.safetensors", "sd2": "tiny_sd2.safetensors"}
VAE_FILES = {4: "tiny_vae_4ch.safetensors", 16: "tiny_vae_16ch.safetensors"}
CONTEXT_TOKENS = 8


_WEIGHTS = {}


def _weights(name, module):
    """Deterministic weights named `name` for every tensor of `module`'s state dict (ComfyUI's ops skip
    weight init). Cached per name; loading them into a model copies, so the cache is never modified."""
    if name not in _WEIGHTS:
        _WEIGHTS[name] = _random_state_dict(module, name)
    return _WEIGHTS[name]


def _random_state_dict(module, name):
    generator = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little"))
    out = {}
    for key, value in module.state_dict().items():
        if not value.is_floating_point():
            out[key] = value.clone()
        elif key.endswith("scale") or ("norm" in key and key.endswith("weight")):
            out[key] = torch.ones(value.shape, dtype=value.dtype)
        elif value.ndim >= 2:
            fan_in = value[0].numel()
            out[key] = torch.randn(value.shape, generator=generator).to(value.dtype) / fan_in**0.5
        else:
            out[key] = torch.randn(value.shape, generator=generator).to(value.dtype) * 0.02
    return out


def _model_config(family):
    import comfy.model_base
    import comfy.supported_models

    if family == "flux":
        unet_config = {
            "image_model": "flux", "guidance_embed": True, "in_channels": 16, "out_channels": 16,
            "patch_size": 2, "hidden_size": 64, "num_heads": 2, "axes_dim": [8, 12, 12], "mlp_ratio": 4.0,
            "theta": 10000, "qkv_bias": True, "depth": 1, "depth_single_blocks": 1,
            "context_in_dim": FAMILIES["flux"]["context_dim"], "vec_in_dim": FAMILIES["flux"]["pooled_dim"],
        }
        return comfy.supported_models.Flux(unet_config), None
    if family in ("sd3", "sd35"):
        # exactly what comfy.model_detection.detect_unet_config reads back from the saved file
        unet_config = {
            "in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": 1, "input_size": None,
            "adm_in_channels": FAMILIES["sd3"]["pooled_dim"],
            "context_embedder_config": {"target": "torch.nn.Linear", "params": {
                "in_features": FAMILIES["sd3"]["context_dim"], "out_features": 64}},
            "num_patches": 1024, "pos_embed_max_size": 32, "pos_embed_scaling_factor": None,
            "x_block_self_attn_layers": [0] if family == "sd35" else [],
        }
        return comfy.supported_models.SD3(unet_config), None
    if family == "qwen_image":  # one double-stream block; latents [B, 16, 1, H, W] as ComfyUI's Wan-2.1 format
        unet_config = {"image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16,
                       "num_layers": 1, "attention_head_dim": 16, "num_attention_heads": 2,
                       "joint_attention_dim": FAMILIES["qwen_image"]["context_dim"], "axes_dims_rope": (4, 6, 6)}
        return comfy.supported_models.QwenImage(unet_config), None
    if family == "lumina2":  # Z-Image's layout (its modulation needs dim >= 256), one block of each kind
        unet_config = {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 256, "n_layers": 1,
                       "n_refiner_layers": 1, "n_heads": 4, "n_kv_heads": 4, "multiple_of": 16,
                       "ffn_dim_multiplier": 8.0 / 3.0, "norm_eps": 1e-5, "qk_norm": True,
                       "cap_feat_dim": FAMILIES["lumina2"]["context_dim"], "axes_dims": [16, 24, 24],
                       "axes_lens": [1536, 512, 512], "rope_theta": 256.0, "z_image_modulation": True,
                       "time_scale": 1000.0, "pad_tokens_multiple": 32}
        return comfy.supported_models.ZImage(unet_config), None
    if family in ("sd2", "sd2_v"):
        # SD2's detection needs 320 channels and 1024-d context; one level, one block, no middle block
        unet_config = {
            "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
            "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "model_channels": 320,
            "num_res_blocks": [1], "transformer_depth": [1], "transformer_depth_output": [1, 1],
            "channel_mult": [1], "transformer_depth_middle": -2, "use_linear_in_transformer": True,
            "context_dim": 1024, "num_head_channels": 64, "use_temporal_resblock": False,
            "use_temporal_attention": False,
        }
        model_type = comfy.model_base.ModelType.V_PREDICTION if family == "sd2_v" else comfy.model_base.ModelType.EPS
        return comfy.supported_models.SD20(unet_config), model_type
    raise ValueError(f"unknown tiny model family {family!r}; choose one of {sorted(FAMILIES)}")


def build_model(family, dtype=torch.float32):
    """A ModelPatcher around a tiny `family` model with fixed random weights (same weights every call), its
    weights in `dtype` and manual-cast as ComfyUI would for the host's device."""
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher

    model_config, model_type = _model_config(family)
    load_device = comfy.model_management.get_torch_device()
    model_config.set_inference_dtype(dtype, comfy.model_management.unet_manual_cast(
        dtype, load_device, model_config.supported_inference_dtypes))
    if model_type is None:
        model = model_config.get_model({})
    else:
        model = comfy.model_base.BaseModel(model_config, model_type=model_type)
    model.load_model_weights(dict(_weights(family.removesuffix("_v"), model.diffusion_model)), "")  # it pops keys
    return comfy.model_patcher.ModelPatcher(
        model, load_device=load_device, offload_device=comfy.model_management.unet_offload_device())


def build_vae(latent_channels):
    """A comfy.sd.VAE holding a TAESD with fixed random weights (8x down/up-scaling)."""
    import comfy.sd

    return comfy.sd.VAE(sd=_vae_state_dict(latent_channels))


def build_wan_vae():
    """A comfy.sd.VAE holding a small Wan-2.1 VAE (the architecture of Qwen-Image's VAE: one-frame video
    latents [B, 16, 1, H / 8, W / 8]) with fixed random weights."""
    import comfy.sd
    from comfy.ldm.wan.vae import WanVAE

    module = WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                    temperal_downsample=[False, True, True])
    return comfy.sd.VAE(sd=dict(_weights("wan_vae", module)))


def _vae_state_dict(latent_channels):
    import comfy.taesd.taesd

    weights = dict(_weights(f"vae{latent_channels}", comfy.taesd.taesd.TAESD(latent_channels=latent_channels)))
    weights.update(vae_scale=torch.tensor(1.0), vae_shift=torch.tensor(0.0))
    return weights


def conditioning(family, seed=0, batch=1):
    """CONDITIONING ([[context, extras]]) with the dimensions `family` expects; `seed` picks the "prompt"."""
    dims = FAMILIES[family]
    generator = torch.Generator().manual_seed(seed)
    context = torch.randn((batch, CONTEXT_TOKENS, dims["context_dim"]), generator=generator)
    extras = {}
    if dims["pooled_dim"] is not None:
        extras["pooled_output"] = torch.randn((batch, dims["pooled_dim"]), generator=generator)
    if family == "flux":
        extras["guidance"] = 3.5
    return [[context, extras]]


def write_model_files(models_dir):
    """Write the tiny SD3/SD2 models and both tiny VAEs where ComfyUI's stock loaders find them."""
    import comfy.utils
    from pathlib import Path

    models_dir = Path(models_dir)
    (models_dir / "diffusion_models").mkdir(parents=True, exist_ok=True)
    (models_dir / "vae").mkdir(parents=True, exist_ok=True)
    for family, name in MODEL_FILES.items():
        weights = build_model(family).model.diffusion_model.state_dict()
        comfy.utils.save_torch_file(weights, str(models_dir / "diffusion_models" / name))
    for channels, name in VAE_FILES.items():
        comfy.utils.save_torch_file(_vae_state_dict(channels), str(models_dir / "vae" / name))


class TinyModel:
    """Test node: a tiny native model of the chosen family (FLUX has no loadable file, see module doc)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (list(FAMILIES), {"tooltip": "model family"})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, family):
        return (build_model(family),)


class TinyConditioning:
    """Test node: random conditioning with the dimensions a tiny model of the chosen family expects."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "family": (list(FAMILIES), {"tooltip": "model family"}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "which random conditioning"}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "build"
    CATEGORY = "testing"

    def build(self, family, seed):
        return (conditioning(family, seed),)


NODE_CLASS_MAPPINGS = {"TinyModel": TinyModel, "TinyConditioning": TinyConditioning}
