"""'Train SR LoRA' on native ComfyUI diffusion models whose sampling is a rectified flow (FLUX, SD3,
Z-Image, Qwen-Image, ... and SD2 patched to flow sampling with ModelSamplingSD3, as FlowSR uses SD2.1).

The objectives of training/ call ``net(x, t, s, cond) -> u``; `NativeFlowNet` gives a ComfyUI BaseModel
that interface, with the conditioning built by ComfyUI's own sampler helpers. The SR batches are encoded
into the model's latent space, and the LoRA lives in the MODEL's own diffusion model (no copy of a
multi-GB model) only while `native_lora_trainer` is open: afterwards the MODEL is as it was.
"""

from __future__ import annotations

import contextlib
from functools import partial

import comfy.model_management
import comfy.sampler_helpers
import comfy.samplers
import torch

from ..adapters.dual_lora import dual_branch_layers, remove_dual_branch_lora
from ..adapters.lora import LoraSpec, lora_layers, remove_lora
from ..samplers.flow_map import average_velocity, per_sample
from ..samplers.sampling import CONDITION_KEY, TARGET_KEY
from ..training.adversarial import AdversarialLoRA, AdversarialLoRATrainer
from ..training.sr_data import ImageCrops, sr_batches
from ..training.trainer import TrainConfig
from .dual_branch import is_dual_patched
from .dual_branch_lora import DualBranchLoRATrainer, dual_branch_splits, trains_dual_branch_lora
from .model_info import model_info
from .sampling import empty_conditioning, parametrization_of

# The wrapper keeps the diffusion model at the attribute name BaseModel gives it, so its module paths
# are the BaseModel's state-dict paths, which ComfyUI's LoRA loader maps: the keys need no prefix.
LORA_KEY_PREFIX = ""
# Native models are plain one-time flows: the two-time objectives need a second time input they lack.
CONSISTENCY = "flow_matching"
# A MODEL through the dual-branch patch has one (bridge/dual_branch.py): TEASR's any-step training.
DUAL_CONSISTENCY = "teasr_any_step"
# ... and its LoRA also adapts the modulation layers, which see the target time s
# (bridge/dual_branch.modulation_layers), and Lumina 2's attention and feed-forward layers (which
# NATIVE_TARGETS does not name).
DUAL_EXTRA_TARGETS = ("attention.out", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
# The smallest latent side the default PatchDiscriminator (three stride-2 layers) takes.
MIN_LATENT_SIDE = 8


class NativeFlowNet(torch.nn.Module):
    """net(x, t, s, cond) -> u over a ComfyUI BaseModel with CONST (rectified-flow) sampling: sigma = t,
    x0 = apply_model(x, sigma, **conditioning) (ComfyUI's own input / output scaling), u = (x - x0) / t,
    the velocity of the plain family (s is unused; the objectives never evaluate at t = 0). `cond` (the LR
    latent) is for the discriminator: the model sees the LR only through x, as when it samples.

    model_conds: {name: ComfyUI cond object} (see `model_conditioning`), repeated to each call's batch.
    dual_options: for a MODEL through the dual-branch patch, its transformer_options (the patch's
    wrapper); the net then asks for the jump to s (per sample) with `cond` as the LR condition tokens.
    """

    def __init__(self, base_model, model_conds: dict, dual_options: dict | None = None):
        super().__init__()
        self.diffusion_model = base_model.diffusion_model
        # Outside the module tree: only the diffusion model's parameters are trained, moved or saved.
        self.__dict__["base_model"] = base_model
        self.model_conds = model_conds
        self.dual_options = dual_options

    def forward(self, x, t, s, cond=None):
        conditioning = {name: c.process_cond(batch_size=x.shape[0], device=x.device, area=None).cond
                        for name, c in self.model_conds.items()}
        if self.dual_options is not None:
            conditioning["transformer_options"] = {**self.dual_options, CONDITION_KEY: cond,
                                                   TARGET_KEY: {"sigma_to": s, "family": "dual_branch"}}
        # Qwen-Image's model takes [B, C, 1, H, W] latents; the objectives may hand them over as [B, C, H, W]
        add_frame = self.base_model.latent_format.latent_dimensions == 3 and x.ndim == 4
        with torch.autograd.graph.saved_tensors_hooks(saved_activation_copy, lambda saved: saved):
            x0 = self.base_model.apply_model(x.unsqueeze(2) if add_frame else x, t, **conditioning)
        return average_velocity(x, x0.squeeze(2) if add_frame else x0, per_sample(t, x))


def saved_activation_copy(tensor: torch.Tensor) -> torch.Tensor:
    """What autograd keeps of a tensor it saves for the backward pass: a copy of activations. ComfyUI's
    inference code updates the residual stream in place (FLUX's blocks: ``x += ...``) after a norm has
    saved it, which autograd refuses; the copy keeps the saved value (leaves, i.e. weights and inputs,
    are never updated in place and are kept as they are). The original is freed as the forward moves on."""
    return tensor.clone() if tensor.grad_fn is not None else tensor


def check_flow_sampling(model) -> None:
    """A clear error for MODELs that do not sample as a rectified flow (eps / v models)."""
    if parametrization_of(model.get_model_object("model_sampling")) != "flow":
        raise ValueError(
            f"Train SR LoRA: this MODEL samples as a {model.model.model_type.name} model, not as a rectified "
            "flow, and the SR LoRA is trained on the flow from the LR latent to the HR latent. Patch it to flow "
            "sampling with ComfyUI's ModelSamplingSD3 node (for weights trained as a flow, e.g. FlowSR's SD2.1) "
            "or connect a flow model (FLUX, SD3, Z-Image, Qwen-Image, ...).")


def model_conditioning(model, positive, latent: torch.Tensor) -> dict:
    """{name: cond object} that the model's extra_conds make of CONDITIONING `positive` for latents
    shaped like `latent`, through ComfyUI's own sampler helpers (no per-family code)."""
    if positive is None:
        if model_info(model).needs_text:
            raise ValueError("Train SR LoRA: this MODEL takes a text conditioning: connect the 'positive' "
                             "input (e.g. CLIPTextEncode of an empty or a quality prompt)")
        positive = empty_conditioning()
    if len(positive) != 1:
        raise ValueError(f"Train SR LoRA: 'positive' holds {len(positive)} conditionings (combined or area "
                         "conditioning); connect a single text encoding")
    conds = comfy.samplers.encode_model_conds(model.model.extra_conds, comfy.sampler_helpers.convert_cond(positive),
                                              latent, model.load_device, "positive")
    return conds[0]["model_conds"]


def latent_encoder(vae, base_model):
    """pixels [B, 3, H, W] in [-1, 1] -> [B, C, h, w] latents in the model's space (process_latent_in, as
    ComfyUI's samplers hand latents to the model), without gradient."""

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            latent = base_model.process_latent_in(vae.encode(((pixels + 1) / 2).clamp(0, 1).movedim(1, -1)))
        # one-frame video latents (Qwen-Image's Wan VAE) train as images: the PatchGAN and the objectives
        # take [B, C, H, W]; NativeFlowNet gives the model its frame dimension back
        return latent.squeeze(2) if latent.ndim == 5 and latent.shape[2] == 1 else latent

    return encode


def latent_sr_batches(pixel_batches, encode):
    """`sr_batches` in latent space, encoded per batch: x0 the HR latent, x1 = cond the LR latent
    (start mode 'lr': the flow runs from the LR latent at t = 1 to the HR latent at t = 0)."""

    def draw(generator: torch.Generator) -> dict:
        batch = pixel_batches(generator)
        lr = encode(batch["cond"])
        return {"x0": encode(batch["x0"]), "x1": lr, "cond": lr}

    return draw


def unfrozen_inference_weights(module: torch.nn.Module) -> None:
    """ComfyUI loads models inside torch.inference_mode, and autograd cannot save inference tensors for
    the backward pass through the frozen layers: swap each such parameter or buffer for a normal copy,
    one tensor at a time (equal values; the old tensor is freed unless something else holds it)."""
    for owner in module.modules():
        for store in (owner._parameters, owner._buffers):
            for name, tensor in store.items():
                if tensor is not None and tensor.is_inference():
                    copy = tensor.clone()
                    store[name] = (torch.nn.Parameter(copy, requires_grad=tensor.requires_grad)
                                   if isinstance(tensor, torch.nn.Parameter) else copy)


@contextlib.contextmanager
def native_lora_trainer(model, vae, positive, crops: ImageCrops, spec: LoraSpec, objective: AdversarialLoRA,
                        config: TrainConfig, batch_size: int, crop_size: int, scale: int, real_degradation: float,
                        discriminator: str, metadata: dict):
    """An AdversarialLoRATrainer whose generator is `NativeFlowNet` over the MODEL's own diffusion model
    with the LoRA injected in place; on leaving, the LoRA is removed again (the MODEL is unchanged).
    The MODEL is loaded first (comfy.model_management) so that its own patches are in the weights.
    A MODEL through the Dual-Branch Patch (FLUX, SD3, Qwen-Image, Lumina 2) gets a dual-branch LoRA
    (bridge/dual_branch_lora.py: branch 1 on the noise tokens, branch 2 on the condition tokens), other
    MODELs peft's LoRA. Give it an objective with consistency
    CONSISTENCY (DUAL_CONSISTENCY on a patched MODEL) and a config with ema_decay None (an EMA would be
    a second copy of the model)."""
    check_flow_sampling(model)
    if discriminator != "patch":
        raise ValueError(f"Train SR LoRA: discriminator {discriminator!r} reads the OneStep SR default model's "
                         "blocks; choose 'patch' (a PatchGAN on the latents) for native models")
    compression = vae.spacial_compression_encode()
    if crop_size % compression or crop_size < MIN_LATENT_SIDE * compression:
        raise ValueError(f"Train SR LoRA: for this VAE crop_size must be a multiple of its downscale factor "
                         f"{compression} and at least {MIN_LATENT_SIDE * compression} (latents of "
                         f"{MIN_LATENT_SIDE} pixels for the PatchGAN's strided layers), got {crop_size}")
    comfy.model_management.load_models_gpu([model])
    base_model = model.model
    diffusion_model = base_model.diffusion_model
    encode = latent_encoder(vae, base_model)
    probe = encode(torch.zeros(1, 3, crop_size, crop_size))
    dual = is_dual_patched(model)
    net = NativeFlowNet(base_model, model_conditioning(model, positive, probe),
                        dict(model.model_options["transformer_options"]) if dual else None)
    was_training = diffusion_model.training
    unfrozen_inference_weights(diffusion_model)
    dual_lora = trains_dual_branch_lora(model)
    make = AdversarialLoRATrainer
    if dual_lora:
        splits = dual_branch_splits(diffusion_model, spec, prefix="diffusion_model.")
        make = partial(DualBranchLoRATrainer, splits=splits)
    try:
        yield make(
            net, spec, objective,
            latent_sr_batches(sr_batches(crops, batch_size, crop_size, real_degradation, scales=(scale,)), encode),
            config, probe=(torch.zeros_like(probe), torch.zeros_like(probe)), discriminator=discriminator,
            metadata={**metadata, "family": "dual_branch" if dual else "plain",
                      "adapter": "dual_branch_lora" if dual_lora else "lora", "base_model": f"{type(base_model).__name__} (ComfyUI MODEL)",
                      "latent_shape": list(probe.shape[1:])})
    finally:
        if lora_layers(net):
            remove_lora(net)
        if dual_branch_layers(net):
            remove_dual_branch_lora(net)
        diffusion_model.train(was_training)
