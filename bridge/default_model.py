"""The project's own pixel-space flow-map SR model as a standard ComfyUI MODEL (rectified flow, CONST
sampling, built from ComfyUI's operations) plus a pixel-space VAE, so every sampler, guider and
SamplerCustomAdvanced graph runs on it. The network itself lives in models/flow_map_sr.py."""

from __future__ import annotations

import logging
import os

import comfy.conds
import comfy.latent_formats
import comfy.lora
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models_base
import comfy.utils
import folder_paths
import torch

from ..files.tensors import read_metadata
from ..models.flow_map_sr import FlowMapSRNet, load_model
from ..models.pipeline import soften_where
from ..samplers.sampling import jump_target
from .model_info import MODEL_INFO_KEY, ModelInfo, set_model_info
from .sampling import SOFTENED_KEY

FOLDER = "onestep_sr"
SHIPPED_WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
SHIPPED_LORAS = os.path.join(SHIPPED_WEIGHTS, "loras")
REALISM_ADAPTER = os.path.join(SHIPPED_LORAS, "onestep_sr_realism.safetensors")


def register_model_folder() -> None:
    """models/onestep_sr/ plus the weights shipped with the extension, so the default model is
    listed without any user action; the shipped LoRAs (the realism adapter) join ComfyUI's loras/."""
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)
    folder_paths.add_model_folder_path(FOLDER, SHIPPED_WEIGHTS)
    paths, _ = folder_paths.folder_names_and_paths[FOLDER]
    folder_paths.folder_names_and_paths[FOLDER] = (paths, {".safetensors"})
    folder_paths.add_model_folder_path("loras", SHIPPED_LORAS)


class FlowMapSRDiffusionModel(torch.nn.Module):
    """ComfyUI's view of FlowMapSRNet: input x, with the LR stacked on channels (c_concat) only for
    a network that takes it as a condition; output the average velocity of the jump the OneStep
    SR sampler asks for. A stock sampler asks for no target, and then s = t: the instantaneous
    velocity, so Euler & co. integrate the flow."""

    def __init__(self, onestep_sr_config: dict, device=None, operations=None, dtype=None, **_):
        super().__init__()
        self.net = FlowMapSRNet(**onestep_sr_config, operations=operations, device=device, dtype=dtype)

    @property
    def dtype(self) -> torch.dtype:  # ComfyUI's BaseModel.get_dtype reads it
        return next(self.parameters()).dtype

    def forward(self, x, timesteps, context=None, control=None, transformer_options={}, softened=None, **_):
        x, lr = x.chunk(2, dim=1) if self.net.condition else (x, None)
        if softened is not None:
            x = soften_where(x, softened)
        return self.net(x, timesteps, jump_target(transformer_options, timesteps), lr)


class FlowMapSRConfig(comfy.supported_models_base.BASE):
    latent_format = comfy.latent_formats.ChromaRadiance  # 3-channel pixel space, identity scaling
    sampling_settings = {"multiplier": 1.0, "shift": 1.0}
    # ComfyUI's memory estimate per latent cell is tuned for 8x-downscaled latents; here a cell is
    # one pixel and the network runs at 1/4 resolution (measured ~0.3 KB per output pixel on CPU)
    memory_usage_factor = 0.01
    supported_inference_dtypes = [torch.float32, torch.bfloat16, torch.float16]


class FlowMapSRComfyModel(comfy.model_base.BaseModel):
    def concat_cond(self, **kwargs):
        """The LR image (the sampler's latent_image), for a network that takes it as a condition;
        the shipped one reads the LR only through its start state, and stacking a copy it ignores
        costs two full-size copies per call."""
        if not self.diffusion_model.net.condition:
            return None
        return comfy.utils.resize_to_batch_size(kwargs["latent_image"], kwargs["noise"].shape[0])

    def extra_conds(self, **kwargs):
        """A per-sample flag: 1 on the negative CONDITIONING (see sampling.empty_conditioning),
        whose branch sees the softened state; both branches carry it so ComfyUI batches them."""
        out = super().extra_conds(**kwargs)
        out["softened"] = comfy.conds.CONDRegular(torch.tensor([float(kwargs.get(SOFTENED_KEY, False))]))
        return out


def is_default_model(model_patcher) -> bool:
    """True for a MODEL made by `load_default_model` (the OneStep SR network inside)."""
    return isinstance(getattr(model_patcher.model, "diffusion_model", None), FlowMapSRDiffusionModel)


def direct_network(model_patcher) -> FlowMapSRNet | None:
    """The default model's network, loaded with its weight patches (LoRA) applied, when nothing in
    the MODEL hooks into ComfyUI's sampling (no model_options function, transformer patch, object
    patch, wrapper or callback); else None.

    Then the one-click node may run the pure pipeline on it: the same evaluations, without the
    ~35 full-image tensor passes ComfyUI's sampling and cond batching add per call (about 20 %
    of this small model's time at 1 MP on a CPU; a large diffusion model does not notice them).
    """
    if not is_default_model(model_patcher):
        return None
    options = model_patcher.model_options
    hooked = (set(options) - {"transformer_options", MODEL_INFO_KEY} or options["transformer_options"]
              or model_patcher.object_patches
              or any(group for kind in (model_patcher.wrappers, model_patcher.callbacks)
                     for groups in kind.values() for group in groups.values()))
    if hooked:
        return None
    comfy.model_management.load_models_gpu([model_patcher])
    return model_patcher.model.diffusion_model.net


def load_default_model(path: str):
    """(MODEL, VAE) for a OneStep SR default-model file, placed as ComfyUI places its native diffusion models
    (comfy.sd.load_diffusion_model_state_dict): the weight dtype from model_management.unet_dtype (its
    --fp16-unet / --bf16-unet / --fp32-unet flags, else what the device computes well: bf16 on recent GPUs),
    manual casting where the device cannot compute in that dtype, weights on the offload device until
    sampling loads them (fully, or partly under --lowvram / --novram, cast layer by layer)."""
    net = load_model(path)
    config = FlowMapSRConfig({"onestep_sr_config": net.config})
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    parameters = sum(parameter.numel() for parameter in net.parameters())
    weight_dtype = comfy.model_management.unet_dtype(model_params=parameters,
                                                     supported_dtypes=config.supported_inference_dtypes,
                                                     weight_dtype=torch.float32)
    if weight_dtype in comfy.model_management.FLOAT8_TYPES and load_device.type == "mps":
        # MPS holds no float8 tensors; this 3 MB network gains nothing from them anyway
        logging.warning("OneStep SR: %s weights (ComfyUI's --fp8-*-unet) are not supported on Apple's MPS; the "
                        "default model loads in float16 instead", weight_dtype)
        weight_dtype = torch.float16
    config.set_inference_dtype(weight_dtype, comfy.model_management.unet_manual_cast(
        weight_dtype, load_device, config.supported_inference_dtypes))
    model = FlowMapSRComfyModel(config, model_type=comfy.model_base.ModelType.FLOW, device=offload_device,
                                unet_model=FlowMapSRDiffusionModel)
    model.diffusion_model.net.load_state_dict(net.state_dict())
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
    set_model_info(patcher, ModelInfo(families=(net.family,), needs_text=False, source_noise=net.source_noise,
                                      objective=read_metadata(path).get("objective")))
    vae = comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})
    return patcher, vae


def compute_dtype(model_patcher) -> torch.dtype:
    """The dtype the MODEL computes in: its manual-cast dtype, else its weights' (as BaseModel._apply_model
    casts the input)."""
    model = model_patcher.model
    return model.manual_cast_dtype or model.get_dtype()


def with_realism(model_patcher, strength: float):
    """The default MODEL with the shipped realism adapter at `strength`, as weight patches: what ComfyUI's
    LoraLoaderModelOnly adds at that strength (0: the MODEL itself, untouched)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"realism must lie in [0, 1] (0 = the faithful output, 1 = the realism adapter at full "
                         f"strength), got {strength}")
    if strength == 0:
        return model_patcher
    if not is_default_model(model_patcher):
        raise ValueError("realism applies the realism adapter shipped for the OneStep SR default model: connect "
                         "'Load OneStep SR Model', or leave realism at 0 and load an SR LoRA for your model with "
                         "LoraLoaderModelOnly")
    lora = comfy.utils.load_torch_file(REALISM_ADAPTER, safe_load=True)
    patches = comfy.lora.load_lora(lora, comfy.lora.model_lora_keys_unet(model_patcher.model, {}), log_missing=False)
    modules = sum(key.endswith(".lora_down.weight") for key in lora)
    if len(patches) != modules:
        raise ValueError(f"the realism adapter fits {len(patches)} of its {modules} layers in this MODEL: it was "
                         "trained for the shipped default model (onestep_sr_default.safetensors); load that one, or "
                         "leave realism at 0")
    patched = model_patcher.clone()
    patched.add_patches(patches, strength)
    return patched
