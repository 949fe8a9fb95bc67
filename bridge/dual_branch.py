"""'OneStep SR Dual-Branch Patch': TEASR's dual-branch diffusion transformer with a decoupled timestep,
made from a native ComfyUI MODEL by object patches and one diffusion-model wrapper. No model code of its
own: ComfyUI's classes run unchanged; the patches only change what goes into them.

The convention (both families, FLUX and Qwen-Image):

- Tokens: ``[text | noise tokens (x_t) | condition tokens (the LR latent)]``. The LR latent enters through
  ComfyUI's own reference-latent path (``ref_latents``), with its RoPE positions forced to the noise
  tokens' (index 0, no offset: `process_img` is called with them), so token k of the condition half sits at
  the position of token k of the noise half. The LR latent comes from the sampler
  (``transformer_options[CONDITION_KEY]``, set by the `dual_branch` family in bridge/sampling.py), else from
  a single reference latent on the conditioning (``ReferenceLatent``, OneStep SR Conditioning's
  ``lr_as_reference``); it must have the latent's own size.
- Times: t, the current noise state (the sampler's sigma), goes through the model's own time embedder;
  s, the jump's target (`samplers.sampling.jump_target`; s = t when no OneStep SR sampler asks), through a
  second embedder that starts as an exact copy of the first: the first's weights (shared, so stock LoRAs
  reach both) plus a trainable residual copy whose output layer starts at zero (`with_second_embedder`).
- Modulation: the time vector becomes two rows ``[e(s), e(t)]`` (pooled / guidance vectors are added to
  both). Row 0, the target-time branch, modulates the noise tokens and the final layer (whose output only
  the noise tokens' part leaves); row 1, the current-time branch, modulates the condition tokens and the
  text. So at s = t both rows are the base model's vector and the patched model *is* the base model (with
  the LR's tokens beside x's when an LR is given); without an LR latent it equals the unpatched model.
- LoRAs: dual-branch LoRA files (`adapters.formats.DualBranchLoRA`, Load SR Adapter) put branch 1 on the
  first half of the image tokens (the noise tokens) and branch 2 on the second (the condition tokens), and
  on a modulation layer branch 1 on row 0 and branch 2 on row 1: they apply to the patched model as they
  are. Stock ComfyUI LoRAs are weight patches and land in the shared weights.

Every patched module behaves exactly like the original outside the wrapper (the state below is unset), and
ModelPatcher puts the originals back when it unpatches.
"""

from __future__ import annotations

import contextvars
import copy
import math
from dataclasses import dataclass

import comfy.ldm.flux.layers
import comfy.ldm.flux.model
import comfy.ldm.qwen_image.model
import comfy.patcher_extension
import torch

from ..samplers.sampling import CONDITION_KEY, TARGET_KEY, jump_target
from .model_info import ModelInfo, model_info, set_model_info

WRAPPER_KEY = "onestep_sr_dual_branch_patch"
NOISE, CONDITION = 0, 1  # the rows of the two-row time vector: target-time (s) and current-time (t) branch
DUAL_FAMILY = "dual_branch"


@dataclass
class DualState:
    """What the wrapper tells the patched modules about the call in progress."""

    s: torch.Tensor          # the target time, in the model's timestep units, shaped like its timesteps
    noise_tokens: int
    condition_tokens: int
    text_tokens: int
    transformer_options: dict


STATE: contextvars.ContextVar[DualState | None] = contextvars.ContextVar("onestep_sr_dual_state", default=None)


def rows_to_tokens(params: torch.Tensor, layout) -> torch.Tensor:
    """[B, 2, D] per-branch parameters -> [B, L, D]: `layout` lists (row, token count) in sequence order."""
    index = torch.cat([torch.full((count,), row, dtype=torch.long) for row, count in layout if count])
    return params.index_select(1, index.to(params.device))


def _subclass(cls: type, name: str, body: dict) -> type:
    return type(f"{name}{cls.__name__}", (cls,), body)


_CLASSES: dict[tuple, type] = {}


def _patched(module: torch.nn.Module, kind: str, forward, extra_modules: dict | None = None, **attrs):
    """A shallow copy of `module` (sharing its parameters and children, so weight patches made through
    either reach the same tensors) whose class runs `forward(self, super_forward, *args)`; `extra_modules`
    are children of the copy only (the copy gets its own child dict)."""
    key = (type(module), kind)
    if key not in _CLASSES:
        def run(self, *args, **kwargs):
            return forward(self, super(subclass, self).forward, *args, **kwargs)
        subclass = _subclass(type(module), kind, {"forward": run})
        _CLASSES[key] = subclass
    out = copy.copy(module)
    out.__class__ = _CLASSES[key]
    if extra_modules:
        out._modules = {**module._modules, **extra_modules}
    out.__dict__.update(attrs)
    return out


def _row_forward(self, original, *args, **kwargs):
    """Select one row of a two-row vector argument (outside the wrapper: unchanged)."""
    args = list(args)
    value = args[self.row_arg]
    if STATE.get() is not None and value.ndim == 3:
        args[self.row_arg] = value[:, self.row]
    return original(*args, **kwargs)


def with_row(module, row: int, arg: int = 0):
    """`module` fed row `row` of its two-row argument number `arg`."""
    return _patched(module, "Row", _row_forward, row=row, row_arg=arg)


def _unsqueeze_forward(self, original, *args, **kwargs):
    out = original(*args, **kwargs)
    return out[:, None] if STATE.get() is not None and out.ndim == 2 else out


def with_unsqueeze(module):
    """`module` whose [B, D] output is [B, 1, D] inside the wrapper (added to the two-row time vector)."""
    return _patched(module, "Broadcast", _unsqueeze_forward)


def _time_forward(self, original, *args, **kwargs):
    e_t = original(*args, **kwargs)
    state = STATE.get()
    if state is None:
        return e_t
    inputs = self.second_inputs(state.s, args, kwargs)
    e_s = original(*inputs) + self.second(*inputs)
    return torch.stack([e_s.to(e_t.dtype), e_t], dim=1)


def with_second_embedder(module, second_inputs):
    """The time embedder `module` with a second embedder for s: inside the wrapper it returns [B, 2, D] =
    [e2(s), e(t)]. e2 = e + r: the first embedder's own weights (so stock LoRAs, casts and offloading reach
    both) plus a trainable residual r, a copy of the embedder whose output layer starts at zero, so that e2
    starts as an exact copy of e. second_inputs(s, args, kwargs) -> the embedder's arguments for s."""
    residual = copy.deepcopy(module)
    last = [m for m in residual.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()
    for parameter in residual.parameters():
        parameter.requires_grad_(False)
    return _patched(module, "DualTime", _time_forward, {"second": residual}, second_inputs=second_inputs)


def _modulation_forward(self, original, vec):
    """FLUX's Modulation: two-row parameters spread over the tokens of the stream this layer modulates. Each
    row goes through the layer on its own, as the base model's [B, D] vector does (the same arithmetic)."""
    state = STATE.get()
    if state is None or vec.ndim != 3:
        return original(vec)
    per_row = [original(vec[:, row]) for row in (NOISE, CONDITION)]
    layout = self.layout(state)

    def spread(fields):
        return rows_to_tokens(torch.cat(fields, dim=1), layout)

    return tuple(None if outs[0] is None else comfy.ldm.flux.layers.ModulationOut(
        *(spread([getattr(out, name) for out in outs]) for name in ("shift", "scale", "gate")))
        for outs in zip(*per_row))


def with_token_rows(module, layout):
    return _patched(module, "TokenRows", _modulation_forward, layout=layout)


def image_layout(state):
    return [(NOISE, state.noise_tokens), (CONDITION, state.condition_tokens)]


def text_layout(state):
    return [(CONDITION, state.text_tokens)]


def joint_layout(state):  # FLUX's single-stream blocks: [text | noise | condition]
    return [(CONDITION, state.text_tokens), *image_layout(state)]


def rows_modulate(original):
    """Qwen-Image's block `_modulate(x, params)` for two-row params [B, 2, 3 D] of the image stream."""

    def modulate(x, params):
        state = STATE.get()
        if state is None or params.ndim != 3:
            return original(x, params)
        shift, scale, gate = rows_to_tokens(params, image_layout(state)).chunk(3, dim=-1)
        return torch.addcmul(shift, x, 1 + scale), gate

    return modulate


def shared_positions(original, pass_options: bool):
    """process_img giving every latent (x and the LR) the noise tokens' RoPE positions inside the wrapper."""

    def process_img(x, index=0, h_offset=0, w_offset=0, **kwargs):
        state = STATE.get()
        if state is None:
            return original(x, index, h_offset, w_offset, **kwargs)
        if pass_options:
            kwargs["transformer_options"] = state.transformer_options
        return original(x, 0, 0, 0, **kwargs)

    return process_img


@dataclass(frozen=True)
class FamilySpec:
    name: str
    ref_arg: int       # index of ref_latents in the diffusion model's forward args after x
    options_arg: int   # index of transformer_options there
    spatial_dims: int  # trailing dims of the latent the model's forward takes (FLUX 2: H, W; Qwen: T, H, W)


FLUX = FamilySpec("flux", ref_arg=4, options_arg=6, spatial_dims=2)
QWEN = FamilySpec("qwen_image", ref_arg=4, options_arg=5, spatial_dims=3)


def family_of(diffusion_model) -> FamilySpec:
    if isinstance(diffusion_model, comfy.ldm.qwen_image.model.QwenImageTransformer2DModel):
        return QWEN
    if isinstance(diffusion_model, comfy.ldm.flux.model.Flux):
        if diffusion_model.params.global_modulation:
            raise ValueError("OneStep SR Dual-Branch Patch: FLUX.2-style global modulation is not supported yet; "
                             "connect a FLUX.1, Qwen-Image MODEL")
        return FLUX
    raise ValueError(f"OneStep SR Dual-Branch Patch: the MODEL's diffusion model is a "
                     f"{type(diffusion_model).__name__}; the patch supports FLUX.1 and Qwen-Image "
                     "(SD3 and Lumina 2 / Z-Image are not done yet): connect one of those")


def _flux_time_inputs(s, args, kwargs):
    return (comfy.ldm.flux.layers.timestep_embedding(s, 256).to(args[0].dtype),)


def _qwen_time_inputs(s, args, kwargs):
    return (s, args[1])


def object_patches(model_patcher, spec: FamilySpec) -> dict:
    """{path: object} of the patch for `spec`'s family (see the module docstring)."""
    get = model_patcher.get_model_object
    patches = {}
    if spec is QWEN:
        dm = get("diffusion_model")
        patches["diffusion_model.process_img"] = shared_positions(get("diffusion_model.process_img"), False)
        patches["diffusion_model.time_text_embed"] = with_second_embedder(get("diffusion_model.time_text_embed"),
                                                                          _qwen_time_inputs)
        for i in range(len(dm.transformer_blocks)):
            block = f"diffusion_model.transformer_blocks.{i}"
            patches[f"{block}._modulate"] = rows_modulate(get(f"{block}._modulate"))
            patches[f"{block}.txt_mod"] = with_row(get(f"{block}.txt_mod"), CONDITION)
        if hasattr(dm, "norm_out"):
            patches["diffusion_model.norm_out"] = with_row(get("diffusion_model.norm_out"), NOISE, arg=1)
        return patches
    dm = get("diffusion_model")
    patches["diffusion_model.process_img"] = shared_positions(get("diffusion_model.process_img"), True)
    patches["diffusion_model.time_in"] = with_second_embedder(get("diffusion_model.time_in"), _flux_time_inputs)
    if dm.params.guidance_embed:
        patches["diffusion_model.guidance_in"] = with_unsqueeze(get("diffusion_model.guidance_in"))
    if dm.vector_in is not None:
        patches["diffusion_model.vector_in"] = with_unsqueeze(get("diffusion_model.vector_in"))
    for i in range(len(dm.double_blocks)):
        block = f"diffusion_model.double_blocks.{i}"
        patches[f"{block}.img_mod"] = with_token_rows(get(f"{block}.img_mod"), image_layout)
        patches[f"{block}.txt_mod"] = with_token_rows(get(f"{block}.txt_mod"), text_layout)
    for i in range(len(dm.single_blocks)):
        block = f"diffusion_model.single_blocks.{i}"
        patches[f"{block}.modulation"] = with_token_rows(get(f"{block}.modulation"), joint_layout)
    if hasattr(dm, "final_layer"):
        patches["diffusion_model.final_layer"] = with_row(get("diffusion_model.final_layer"), NOISE, arg=1)
    return patches


def tokens(latent: torch.Tensor, patch_size: int) -> int:
    return math.prod(math.ceil(side / patch_size) for side in latent.shape[-2:])


def condition_latent(lr: torch.Tensor, x: torch.Tensor, spec: FamilySpec) -> torch.Tensor:
    """The LR latent shaped like x (batch repeated for batched CFG branches, Qwen's frame dim added)."""
    if spec.spatial_dims == 3 and lr.ndim == x.ndim - 1:
        lr = lr.unsqueeze(2)
    if lr.shape[1:] != x.shape[1:] or x.shape[0] % lr.shape[0]:
        raise ValueError(f"OneStep SR dual-branch: the LR condition latent {tuple(lr.shape)} must have the "
                         f"latent's own size {tuple(x.shape)}: encode the LR image at the output size (OneStep SR "
                         "Conditioning) and sample from that latent")
    return lr.to(x).repeat(x.shape[0] // lr.shape[0], *([1] * (lr.ndim - 1)))


def dual_wrapper(spec: FamilySpec, model_sampling, patch_size: int):
    """The DIFFUSION_MODEL wrapper: the LR latent as the one reference latent, the state for the patches."""

    def wrapper(executor, x, *args, **kwargs):
        args = list(args)
        options = args[spec.options_arg] if len(args) > spec.options_arg else kwargs.get("transformer_options", {})
        refs = args[spec.ref_arg] if len(args) > spec.ref_arg else kwargs.get("ref_latents")
        lr = options.get(CONDITION_KEY)
        if lr is None and refs:
            if len(refs) != 1:
                raise ValueError(f"OneStep SR dual-branch: the MODEL got {len(refs)} reference latents; the "
                                 "dual-branch patch takes one, the LR latent (its condition tokens)")
            lr = refs[0]
        if lr is not None:
            lr = condition_latent(lr, x, spec)
        if len(args) > spec.ref_arg:
            args[spec.ref_arg] = None if lr is None else [lr]
        else:
            kwargs["ref_latents"] = None if lr is None else [lr]
        timesteps = args[0]
        s = timesteps if options.get(TARGET_KEY) is None else model_sampling.timestep(jump_target(options, timesteps))
        state = DualState(s=s.to(timesteps), noise_tokens=tokens(x, patch_size),
                          condition_tokens=0 if lr is None else tokens(lr, patch_size),
                          text_tokens=args[1].shape[1], transformer_options=options)
        token = STATE.set(state)
        try:
            return executor(x, *args, **kwargs)
        finally:
            STATE.reset(token)

    return wrapper


def is_dual_patched(model_patcher) -> bool:
    return DUAL_FAMILY in model_info(model_patcher).families


def dual_branch_patch(model_patcher):
    """A clone of the MODEL with the dual-branch patch (see the module docstring); its ModelInfo offers the
    `dual_branch` family first (and `plain`: stock samplers integrate it with s = t)."""
    if is_dual_patched(model_patcher):
        return model_patcher.clone()
    spec = family_of(model_patcher.get_model_object("diffusion_model"))
    out = model_patcher.clone()
    for path, obj in object_patches(model_patcher, spec).items():
        out.add_object_patch(path, obj)
    wrappers = out.model_options["transformer_options"].setdefault("wrappers", {})
    per_type = wrappers.setdefault(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, {})
    # outermost: an adapter's own checks (Load SR Adapter) then see the LR latent as its reference
    wrappers[comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL] = {
        WRAPPER_KEY: [dual_wrapper(spec, model_patcher.get_model_object("model_sampling"),
                                   model_patcher.get_model_object("diffusion_model").patch_size)], **per_type}
    info = model_info(model_patcher)
    set_model_info(out, ModelInfo(families=(DUAL_FAMILY, *[f for f in info.families if f != DUAL_FAMILY]),
                                  needs_text=info.needs_text, source_noise=info.source_noise,
                                  objective=info.objective))
    return out
