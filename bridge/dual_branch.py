"""'OneStep SR Dual-Branch Patch': TEASR's dual-branch diffusion transformer with a decoupled timestep,
made from a native ComfyUI MODEL by object patches and one wrapper (of the diffusion model's forward; of
BaseModel.apply_model for SD3, whose MMDiT has no wrapper executor). No model code of its own: ComfyUI's
classes run unchanged; the patches only change what goes into them.

The convention (every family: FLUX.1, SD3 / MMDiT, Qwen-Image, Lumina 2 / Z-Image):

- Tokens: ``[text | noise tokens (x_t) | condition tokens (the LR latent)]`` (SD3 keeps its text in its own
  stream), and token k of the condition half sits at the position of token k of the noise half. FLUX and
  Qwen-Image: the LR latent enters through ComfyUI's own reference-latent path (``ref_latents``) with
  `process_img` called at index 0 and no offset; SD3: its patch embedder appends the LR's tokens and
  `cropped_pos_embed` repeats the noise tokens' position embedding; Lumina 2: the first noise-refiner
  block appends them (the model's own x_embedder on the LR's patches) and every block gives them the
  noise tokens' RoPE frequencies. The LR latent comes from the sampler (``transformer_options[CONDITION_KEY]``,
  set by the `dual_branch` family in bridge/sampling.py), else (FLUX, Qwen-Image) from a single reference
  latent on the conditioning (``ReferenceLatent``, OneStep SR Conditioning's ``lr_as_reference``); it must
  have the latent's own size.
- Times: t, the current noise state (the sampler's sigma), goes through the model's own time embedder;
  s, the jump's target (`samplers.sampling.jump_target`; s = t when no OneStep SR sampler asks), through a
  second embedder that starts as an exact copy of the first: the first's weights (shared, so stock LoRAs
  reach both) plus a residual copy whose output layer starts at zero (`with_second_embedder`; Train SR
  LoRA leaves it at zero, so its LoRA stays a stock ComfyUI LoRA).
- Modulation: the time vector becomes two rows ``[e(s), e(t)]`` (pooled / guidance vectors are added to
  both). Row 0, the target-time branch, modulates the noise tokens and the final layer (whose output only
  the noise tokens' part leaves); row 1, the current-time branch, modulates the condition tokens and the
  text. Each row goes through a modulation layer on its own, as the base model's vector does, and is then
  spread over its tokens (FLUX's Modulation, Qwen-Image's `_modulate`); SD3's x blocks run their
  per-token pre/post-attention steps once per half with that half's row; Lumina 2's blocks (whose
  modulation is computed inside their forward) get a neutral modulation from their adaLN layer and apply
  the per-token rows in their four RMSNorms (dual_branch_layers.py). So at s = t both rows are the base
  model's vector and the patched model *is* the base model (with the LR's tokens beside x's when an LR is
  given); without an LR latent it equals the unpatched model.
- LoRAs: dual-branch LoRA files (`adapters.formats.DualBranchLoRA`, Load SR Adapter; ODTSR's are for
  Qwen-Image) put branch 1 on the first half of the image tokens (the noise tokens) and branch 2 on the
  second (the condition tokens), and on a modulation layer branch 1 on row 0 and branch 2 on row 1: on
  FLUX and Qwen-Image they apply to the patched model as they are (SD3 and Lumina 2 call their layers per
  half or per row, or on [text | noise | condition], which that halves rule cannot split: refused there).
  Train SR LoRA on the patched model (every family) trains a dual-branch LoRA (bridge/dual_branch_lora.py)
  whose layers split the way the patch lays the tokens out, not by halves: by the token counts the
  wrapper's DualState holds (FLUX's single blocks see [text | noise | condition]; the text takes branch 2,
  as it takes row 1), by the row the patch feeds a modulation layer (`dual_branch_layers.in_row`), by the
  half SD3's per-half steps compute (`in_half`), by the layout a Lumina 2 block records; its file says so
  in its metadata and Load SR Adapter loads it on all four. Stock ComfyUI LoRAs are weight patches and
  land in the shared weights.

Every patched module behaves exactly like the original outside the wrapper (the state below is unset), and
ModelPatcher puts the originals back when it unpatches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import comfy.ldm.common_dit
import comfy.ldm.flux.layers
import comfy.ldm.flux.model
import comfy.ldm.lumina.model
import comfy.ldm.modules.diffusionmodules.mmdit
import comfy.ldm.qwen_image.model
import comfy.patcher_extension
import torch
from einops import rearrange

from ..samplers.sampling import CONDITION_KEY, TARGET_KEY, jump_target
from . import dual_branch_layers as layers
from .dual_branch_layers import CONDITION, NOISE, STATE, DualState
from .model_info import ModelInfo, model_info, set_model_info

WRAPPER_KEY = "onestep_sr_dual_branch_patch"
DUAL_FAMILY = "dual_branch"
WRAPPERS = comfy.patcher_extension.WrappersMP


@dataclass(frozen=True)
class FamilySpec:
    name: str
    level: str                # the wrapper type: the diffusion model's forward, or BaseModel.apply_model
    options_arg: int | None   # index of transformer_options in the wrapped call's args after x (None: kwargs)
    ref_arg: int | None       # index of ref_latents there (None: the family has no reference latents)
    spatial_dims: int         # trailing dims of the latent the model takes (2: H, W; 3: T, H, W for Qwen-Image)


FLUX = FamilySpec("flux", WRAPPERS.DIFFUSION_MODEL, options_arg=6, ref_arg=4, spatial_dims=2)
QWEN = FamilySpec("qwen_image", WRAPPERS.DIFFUSION_MODEL, options_arg=5, ref_arg=4, spatial_dims=3)
# MMDiT's forward has no wrapper executor: the patch wraps apply_model (x, t = sigma, c_concat, c_crossattn,
# control, transformer_options)
SD3 = FamilySpec("sd3", WRAPPERS.APPLY_MODEL, options_arg=4, ref_arg=None, spatial_dims=2)
LUMINA = FamilySpec("lumina2", WRAPPERS.DIFFUSION_MODEL, options_arg=None, ref_arg=None, spatial_dims=2)


def family_of(diffusion_model) -> FamilySpec:
    if isinstance(diffusion_model, comfy.ldm.qwen_image.model.QwenImageTransformer2DModel):
        return QWEN
    if isinstance(diffusion_model, comfy.ldm.flux.model.Flux) and not diffusion_model.params.global_modulation:
        return FLUX
    if isinstance(diffusion_model, comfy.ldm.modules.diffusionmodules.mmdit.MMDiT):
        return SD3
    if (isinstance(diffusion_model, comfy.ldm.lumina.model.NextDiT) and len(diffusion_model.noise_refiner)
            and diffusion_model.noise_refiner[0].modulation):
        return LUMINA
    raise ValueError(f"OneStep SR Dual-Branch Patch: the MODEL's diffusion model is a "
                     f"{type(diffusion_model).__name__}; the patch supports FLUX.1, SD3 (MMDiT), Qwen-Image and "
                     "Lumina 2 / Z-Image: connect one of those (FLUX.2's global modulation is not supported)")


def _flux_time_inputs(s, args, kwargs):
    return (comfy.ldm.flux.layers.timestep_embedding(s, 256).to(args[0].dtype),)


def _qwen_time_inputs(s, args, kwargs):
    return (s, args[1])


def _sd3_time_inputs(s, args, kwargs):
    return (s, kwargs["dtype"])


def _lumina_time_inputs(time_scale):
    return lambda s, args, kwargs: ((1.0 - s) * time_scale, kwargs["dtype"])


def _qwen_patches(get, dm) -> dict:
    patches = {"diffusion_model.process_img": layers.shared_positions(get("diffusion_model.process_img"), False),
               "diffusion_model.time_text_embed": layers.with_second_embedder(get("diffusion_model.time_text_embed"),
                                                                              _qwen_time_inputs)}
    for i in range(len(dm.transformer_blocks)):
        block = f"diffusion_model.transformer_blocks.{i}"
        patches[f"{block}._modulate"] = layers.rows_modulate(get(f"{block}._modulate"))
        patches[f"{block}.img_mod"] = layers.with_rows_separately(get(f"{block}.img_mod"))
        patches[f"{block}.txt_mod"] = layers.with_row(get(f"{block}.txt_mod"), CONDITION)
    if hasattr(dm, "norm_out"):
        patches["diffusion_model.norm_out"] = layers.with_row(get("diffusion_model.norm_out"), NOISE, arg=1)
    return patches


def _flux_patches(get, dm) -> dict:
    patches = {"diffusion_model.process_img": layers.shared_positions(get("diffusion_model.process_img"), True),
               "diffusion_model.time_in": layers.with_second_embedder(get("diffusion_model.time_in"), _flux_time_inputs)}
    if dm.params.guidance_embed:
        patches["diffusion_model.guidance_in"] = layers.with_unsqueeze(get("diffusion_model.guidance_in"))
    if dm.vector_in is not None:
        patches["diffusion_model.vector_in"] = layers.with_unsqueeze(get("diffusion_model.vector_in"))
    for i in range(len(dm.double_blocks)):
        block = f"diffusion_model.double_blocks.{i}"
        patches[f"{block}.img_mod"] = layers.with_token_rows(get(f"{block}.img_mod"), layers.image_layout)
        patches[f"{block}.txt_mod"] = layers.with_token_rows(get(f"{block}.txt_mod"), layers.text_layout)
    for i in range(len(dm.single_blocks)):
        block = f"diffusion_model.single_blocks.{i}"
        patches[f"{block}.modulation"] = layers.with_token_rows(get(f"{block}.modulation"), layers.joint_layout)
    if hasattr(dm, "final_layer"):
        patches["diffusion_model.final_layer"] = layers.with_row(get("diffusion_model.final_layer"), NOISE, arg=1)
    return patches


def _sd3_patches(get, dm) -> dict:
    patches = {"diffusion_model.x_embedder": layers.with_condition_tokens(get("diffusion_model.x_embedder")),
               "diffusion_model.cropped_pos_embed": layers.repeated_positions(get("diffusion_model.cropped_pos_embed")),
               "diffusion_model.t_embedder": layers.with_second_embedder(get("diffusion_model.t_embedder"),
                                                                         _sd3_time_inputs),
               "diffusion_model.final_layer": layers.with_noise_final(get("diffusion_model.final_layer"))}
    if dm.y_embedder is not None:
        patches["diffusion_model.y_embedder"] = layers.with_unsqueeze(get("diffusion_model.y_embedder"))
    for i, joint in enumerate(dm.joint_blocks):
        block = f"diffusion_model.joint_blocks.{i}"
        patches[f"{block}.context_block.pre_attention"] = layers.with_condition_row(
            get(f"{block}.context_block.pre_attention"))
        for pre, post, outputs in (("pre_attention", "post_attention", 1), ("pre_attention_x", "post_attention_x", 2)):
            patches[f"{block}.x_block.{pre}"] = layers.split_pre_attention(get(f"{block}.x_block.{pre}"))
            patches[f"{block}.x_block.{post}"] = layers.split_post_attention(get(f"{block}.x_block.{post}"), outputs)
    return patches


def _lumina_patches(get, dm) -> dict:
    patches = {"diffusion_model.t_embedder": layers.with_second_embedder(get("diffusion_model.t_embedder"),
                                                                         _lumina_time_inputs(dm.time_scale)),
               "diffusion_model.final_layer": layers.with_noise_final(get("diffusion_model.final_layer"))}
    blocks = [f"diffusion_model.noise_refiner.{i}" for i in range(len(dm.noise_refiner))]
    blocks += [f"diffusion_model.layers.{i}" for i in range(len(dm.layers))]
    for index, block in enumerate(blocks):
        patches[block] = layers.with_lumina_block(get(block), inject=index == 0)
        patches[f"{block}.adaLN_modulation"] = layers.with_neutral_modulation(get(f"{block}.adaLN_modulation"))
        for slot, norm in enumerate(("attention_norm1", "attention_norm2", "ffn_norm1", "ffn_norm2")):
            patches[f"{block}.{norm}"] = layers.with_lumina_norm(get(f"{block}.{norm}"), slot)
    return patches


PATCHES = {FLUX: _flux_patches, QWEN: _qwen_patches, SD3: _sd3_patches, LUMINA: _lumina_patches}


def object_patches(model_patcher, spec: FamilySpec) -> dict:
    """{path: object} of the patch for `spec`'s family (see the module docstring)."""
    get = model_patcher.get_model_object
    return PATCHES[spec](get, get("diffusion_model"))


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


def _lumina_embedder(dm, lr):
    """The LR latent as NextDiT's x tokens: its own x_embedder on the LR's p x p patches (channels last)."""
    p = dm.patch_size

    def embed():
        padded = comfy.ldm.common_dit.pad_to_patch_size(lr, (p, p))
        patches = rearrange(padded, "b c (h ph) (w pw) -> b (h w) (ph pw c)", ph=p, pw=p)
        return layers.in_half(STATE.get(), CONDITION, dm.x_embedder, patches)  # a LoRA on it: branch 2

    return embed


def dual_wrapper(spec: FamilySpec, model_sampling, diffusion_model):
    """The wrapper: the LR latent as the condition tokens, the target time s, the state for the patches."""
    patch_size = (diffusion_model.x_embedder.patch_size[0] if spec is SD3 else diffusion_model.patch_size)

    def wrapper(executor, x, *args, **kwargs):
        args = list(args)
        has_options = spec.options_arg is not None and len(args) > spec.options_arg
        options = (args[spec.options_arg] if has_options else kwargs.get("transformer_options")) or {}
        lr = options.get(CONDITION_KEY)
        if spec.ref_arg is not None:
            refs = args[spec.ref_arg] if len(args) > spec.ref_arg else kwargs.get("ref_latents")
            if lr is None and refs:
                if len(refs) != 1:
                    raise ValueError(f"OneStep SR dual-branch: the MODEL got {len(refs)} reference latents; the "
                                     "dual-branch patch takes one, the LR latent (its condition tokens)")
                lr = refs[0]
        if lr is not None:
            lr = condition_latent(lr, x, spec)
        if spec.ref_arg is not None:
            if len(args) > spec.ref_arg:
                args[spec.ref_arg] = None if lr is None else [lr]
            else:
                kwargs["ref_latents"] = None if lr is None else [lr]
        if spec.level == WRAPPERS.APPLY_MODEL:  # args[0] is sigma; the diffusion model sees timestep(sigma)
            sigma = args[0]
            s = model_sampling.timestep(sigma if options.get(TARGET_KEY) is None else jump_target(options, sigma))
            s = s.float()
        else:
            timesteps = args[0]
            s = (timesteps if options.get(TARGET_KEY) is None
                 else model_sampling.timestep(jump_target(options, timesteps)).to(timesteps))
        text = args[1] if spec.level == WRAPPERS.DIFFUSION_MODEL else None
        state = DualState(s=s, noise_tokens=tokens(x, patch_size),
                          condition_tokens=0 if lr is None else tokens(lr, patch_size),
                          text_tokens=0 if text is None else text.shape[1], transformer_options=options,
                          condition=lr if spec in (SD3, LUMINA) else None)
        if spec is LUMINA and lr is not None:
            state.extra["embed_condition"] = _lumina_embedder(diffusion_model, lr)
        token = STATE.set(state)
        try:
            return executor(x, *args, **kwargs)
        finally:
            STATE.reset(token)

    return wrapper


MODULATION_NAMES = ("adaLN_modulation", "img_mod", "txt_mod", "modulation", "norm_out")


def modulation_layers(diffusion_model) -> tuple[str, ...]:
    """Paths of the Linear layers inside the model's adaLN modulation modules (the layers that see the
    two-row time vector), for Train SR LoRA's targets."""
    return tuple(name for name, module in diffusion_model.named_modules() if isinstance(module, torch.nn.Linear)
                 and any(part in MODULATION_NAMES for part in name.split(".")[:-1]))


def check_dual_branch_loras(spec: FamilySpec, halves_rule_loras: bool) -> None:
    """Dual-branch LoRA files without Train SR LoRA's split metadata (ODTSR's) split their input in token
    halves (or a 2-D input in two rows); the SD3 and Lumina 2 patches call those layers per half or per row,
    or on sequences whose halves are not the branches, where such a layer cannot tell the branches apart.
    (Train SR LoRA's files split the way the patch lays the tokens out: bridge/dual_branch_lora.py.)"""
    if halves_rule_loras and spec in (SD3, LUMINA):
        raise ValueError(f"OneStep SR: a dual-branch LoRA file split by token halves (lora_A1/B1/A2/B2 without Train "
                         f"SR LoRA's split metadata, e.g. ODTSR's) and the dual-branch patch do not combine on "
                         f"{spec.name} (its patch runs the layers per token half); use a LoRA Train SR LoRA made on "
                         "the patched model, or a FLUX / Qwen-Image MODEL")


def halves_rule_loras(model_patcher) -> bool:
    """The MODEL carries dual-branch LoRA layers split by the halves rule (Load SR Adapter's object patches)."""
    return any(getattr(obj, "dual_branch", None) is not None and obj.dual_branch.split is None
               for obj in model_patcher.object_patches.values())


def dual_patch_family(model_patcher) -> FamilySpec | None:
    """The family of a MODEL through the dual-branch patch, None for others."""
    return family_of(model_patcher.get_model_object("diffusion_model")) if is_dual_patched(model_patcher) else None


def is_dual_patched(model_patcher) -> bool:
    return DUAL_FAMILY in model_info(model_patcher).families


def dual_branch_patch(model_patcher):
    """A clone of the MODEL with the dual-branch patch (see the module docstring); its ModelInfo offers the
    `dual_branch` family first (and `plain`: stock samplers integrate it with s = t)."""
    if is_dual_patched(model_patcher):
        return model_patcher.clone()
    spec = family_of(model_patcher.get_model_object("diffusion_model"))
    check_dual_branch_loras(spec, halves_rule_loras(model_patcher))
    out = model_patcher.clone()
    for path, obj in object_patches(model_patcher, spec).items():
        out.add_object_patch(path, obj)
    wrappers = out.model_options["transformer_options"].setdefault("wrappers", {})
    per_type = wrappers.setdefault(spec.level, {})
    # outermost: an adapter's own checks (Load SR Adapter) then see the LR latent as its reference
    wrappers[spec.level] = {WRAPPER_KEY: [dual_wrapper(spec, model_patcher.get_model_object("model_sampling"),
                                                       model_patcher.get_model_object("diffusion_model"))],
                            **per_type}
    info = model_info(model_patcher)
    set_model_info(out, ModelInfo(families=(DUAL_FAMILY, *[f for f in info.families if f != DUAL_FAMILY]),
                                  needs_text=info.needs_text, source_noise=info.source_noise,
                                  objective=info.objective))
    return out
