"""'Load OneStep SR Model': the project's own pixel-space flow-map SR model as a standard ComfyUI
MODEL (rectified flow, CONST sampling) plus a pixel-space VAE, so every sampler, guider and
SamplerCustomAdvanced graph runs on it. The network itself lives in models/flow_map_sr.py."""

from __future__ import annotations

import os

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models_base
import comfy.utils
import folder_paths
import torch

from ..models.flow_map_sr import FlowMapSRNet, load_model
from ..models.pipeline import soften_where
from ..samplers import target_of
from ..training.adversarial import DEFAULT_CONSISTENCY
from ..training.checkpoint import read_metadata
from .comfy_glue import MODEL_INFO_KEY, SOFTENED_KEY

FOLDER = "onestep_sr"
SHIPPED_WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")


def register_model_folder() -> None:
    """models/onestep_sr/ plus the weights shipped with the extension, so the default model is
    listed without any user action."""
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)
    folder_paths.add_model_folder_path(FOLDER, SHIPPED_WEIGHTS)
    paths, _ = folder_paths.folder_names_and_paths[FOLDER]
    folder_paths.folder_names_and_paths[FOLDER] = (paths, {".safetensors"})


class FlowMapSRDiffusionModel(torch.nn.Module):
    """ComfyUI's view of FlowMapSRNet: input x, with the LR stacked on channels (c_concat) only for
    a network that takes it as a condition; output the average velocity of the jump the OneStep
    SR sampler asks for. A stock sampler asks for no target, and then s = t: the instantaneous
    velocity, so Euler & co. integrate the flow."""

    def __init__(self, onestep_sr_config: dict, device=None, operations=None, **_):
        super().__init__()
        self.net = FlowMapSRNet(**onestep_sr_config).to(device)

    @property
    def dtype(self) -> torch.dtype:  # ComfyUI's BaseModel.get_dtype reads it
        return next(self.parameters()).dtype

    def forward(self, x, timesteps, context=None, control=None, transformer_options={}, softened=None, **_):
        x, lr = x.chunk(2, dim=1) if self.net.condition else (x, None)
        if softened is not None:
            x = soften_where(x, softened)
        target = target_of(transformer_options)
        s = timesteps if target is None else torch.full_like(timesteps, target["sigma_to"])
        return self.net(x, timesteps, s, lr)


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
        """A per-sample flag: 1 on the negative CONDITIONING (see comfy_glue.empty_conditioning),
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
    """(MODEL, VAE) for a OneStep SR default-model file."""
    net = load_model(path)
    config = FlowMapSRConfig({"onestep_sr_config": net.config})
    load_device = comfy.model_management.get_torch_device()
    model = FlowMapSRComfyModel(config, model_type=comfy.model_base.ModelType.FLOW, device=load_device,
                                unet_model=FlowMapSRDiffusionModel)
    model.diffusion_model.net.load_state_dict(net.state_dict())
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device,
                                               offload_device=comfy.model_management.unet_offload_device())
    patcher.model_options[MODEL_INFO_KEY] = {"families": (net.family,), "needs_text": False,
                                             "source_noise": net.source_noise,
                                             # what adapters trained on it keep as their consistency term
                                             "objective": read_metadata(path).get("objective", DEFAULT_CONSISTENCY)}
    vae = comfy.sd.VAE(sd={"pixel_space_vae": torch.tensor(1.0)})
    return patcher, vae


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
