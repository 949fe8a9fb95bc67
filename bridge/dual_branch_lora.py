"""Dual-branch LoRA on the Dual-Branch Patch (bridge/dual_branch.py) of FLUX.1, SD3 / MMDiT, Qwen-Image and
Lumina 2 / Z-Image: which tokens each linear layer sees, so that branch 1 acts on the noise tokens (and time
row 0, the target time s) and branch 2 on the condition tokens (and time row 1), for Train SR LoRA (it
trains one) and Load SR Adapter (it loads what Train SR LoRA wrote, through the same
`adapters.formats.DualBranchLoRA` maths).

Under the patch the layers see (N noise, C condition, T text tokens); the kinds `layer_kind` answers:

- ``image``: FLUX's ``img_in``, double blocks' ``img_attn`` / ``img_mlp``, ``final_layer.linear``;
  Qwen-Image's ``img_in``, blocks' ``attn.to_q/to_k/to_v/to_out.0``, ``img_mlp``, ``proj_out``:
  ``[noise | condition]`` -> branch 1 on N, branch 2 on C (ODTSR's halves rule, as N = C);
- ``text``: FLUX's ``txt_in``, ``txt_attn`` / ``txt_mlp``; Qwen-Image's ``txt_in``, ``add_q/k/v_proj``,
  ``to_add_out``, ``txt_mlp``: the text, which the patch modulates with row 1 -> branch 2 on all of it;
- ``joint``: FLUX's single blocks (``linear1``, ``linear2``): ``[text | noise | condition]`` -> branch 2, 1,
  2; the halves rule would split this sequence in the wrong place, so these layers split by the token
  counts the patch's DualState holds;
- ``row``: modulation layers (`dual_branch.modulation_layers`): the patch feeds them one time row at a time
  (FLUX's Modulation, final layers, Qwen-Image's img_mod / txt_mod / norm_out, SD3's and Lumina 2's
  adaLN_modulation) -> row r gets branch r + 1 (`dual_branch_layers.in_row` says which);
- ``half``: SD3's x blocks (``attn.qkv/proj``, SD3.5's ``attn2``, ``mlp.fc1/fc2``) and the SD3 / Lumina 2
  ``final_layer.linear``: the patch calls them on one token half at a time (`dual_branch_layers.in_half`
  says which) -> half h gets branch h + 1 (Lumina 2's final layer also carries the text tokens, which
  are dropped after it: they take the noise half's branch, as they take its row);
- ``context``: SD3's ``context_embedder`` and context blocks, Lumina 2's ``cap_embedder`` and context
  refiner: only the text, modulated (where at all) with row 1 -> branch 2;
- ``block``: Lumina 2's noise-refiner and main blocks (``attention.qkv/out``, ``feed_forward.w1/w2/w3``) see
  the whole sequence, ``[noise (+ padding) | condition]`` in the noise refiner and ``[text | noise (+
  padding) | condition]`` after it -> branch 2, 1, 2 by the layout the block patch records
  (``DualState.extra[TOKENS]``, from the DualState token counts); the padding tokens take branch 1;
- ``patches``: Lumina 2's ``x_embedder``, called on x's patches and, from the first noise-refiner block,
  on the LR's (under `in_half`) -> branch 1, branch 2.

Not splittable, refused by name if target_modules names them: the time embedders (and the second
embedder's residual) see the times, not a row; SD3's ``y_embedder`` and FLUX's ``vector_in`` /
``guidance_in`` embed one pooled vector that the patch adds to both rows, so neither branch is theirs.
A file written by Train SR LoRA says so in its metadata (``split: dual_branch_patch``) and runs only
inside the patch's wrapper (a clear error otherwise); ODTSR's files keep the halves rule, which only FLUX
and Qwen-Image lay out (dual_branch.check_dual_branch_loras).
"""

from __future__ import annotations

import torch

from ..adapters.dual_lora import add_dual_branch_lora, dual_branch_layers, save_dual_branch_lora
from ..adapters.lora import LoraSpec
from ..training.adversarial import AdversarialLoRATrainer
from .dual_branch import FLUX, LUMINA, MODULATION_NAMES, QWEN, SD3, dual_patch_family, family_of
from .dual_branch_layers import CONDITION, HALF, ROW, STATE, TOKENS, image_layout, joint_layout, text_layout

DUAL_LORA_FAMILIES = (FLUX, QWEN, SD3, LUMINA)
LAYOUTS = {"image": image_layout, "text": text_layout, "joint": joint_layout}
KINDS = (*LAYOUTS, "row", "half", "context", "block", "patches")
FLUX_STREAMS = {"img_attn": "image", "img_mlp": "image", "txt_attn": "text", "txt_mlp": "text"}
QWEN_LAYERS = {"to_q": "image", "to_k": "image", "to_v": "image", "to_out": "image", "img_mlp": "image",
               "add_q_proj": "text", "add_k_proj": "text", "add_v_proj": "text", "to_add_out": "text",
               "txt_mlp": "text"}
TOP_LAYERS = {FLUX: {"img_in": "image", "txt_in": "text", "final_layer.linear": "image"},
              QWEN: {"img_in": "image", "txt_in": "text", "proj_out": "image"},
              SD3: {"context_embedder": "context", "final_layer.linear": "half"},
              LUMINA: {"x_embedder": "patches", "cap_embedder.1": "context", "final_layer.linear": "half"}}
SD3_STREAMS = {"x_block": "half", "context_block": "context"}
LUMINA_BLOCKS = {"noise_refiner": "block", "layers": "block", "context_refiner": "context"}


def layer_kind(spec, path: str) -> str | None:
    """One of KINDS (see the module docstring) for the Linear layer at `path` of a diffusion model of
    family `spec`; None for layers a dual-branch LoRA cannot split (time and pooled-vector embedders)."""
    parts = path.split(".")
    if any(part in MODULATION_NAMES for part in parts[:-1]):
        return "row"
    if path in TOP_LAYERS[spec]:
        return TOP_LAYERS[spec][path]
    if spec is FLUX and parts[0] == "single_blocks":
        return "joint"
    if spec is FLUX and parts[0] == "double_blocks" and len(parts) > 2:
        return FLUX_STREAMS.get(parts[2])
    if spec is QWEN and parts[0] == "transformer_blocks":
        return next((QWEN_LAYERS[part] for part in parts[2:] if part in QWEN_LAYERS), None)
    if spec is SD3 and parts[0] == "joint_blocks" and len(parts) > 3:
        return SD3_STREAMS.get(parts[2])
    if spec is LUMINA and len(parts) > 2:
        return LUMINA_BLOCKS.get(parts[0])
    return None


def _called_in(state, key: str, path: str, what: str):
    value = state.extra.get(key)
    if value is None:
        raise RuntimeError(f"OneStep SR: the dual-branch LoRA layer {path} was called outside {what}")
    return value


def patch_split(kind: str, path: str):
    """The split of `formats.DualBranchLoRA` for a layer of `kind`, read from the patch's state per call."""
    if kind not in KINDS:
        raise ValueError(f"unknown dual-branch layer kind {kind!r}")

    def split(x: torch.Tensor):
        state = STATE.get()
        if state is None:
            raise ValueError(f"OneStep SR: the dual-branch LoRA at {path} was trained on the OneStep SR Dual-Branch "
                             "Patch and splits its tokens the way the patch lays them out: put the MODEL through "
                             "'OneStep SR Dual-Branch Patch' and sample with family dual_branch")
        if kind == "row":
            return _called_in(state, ROW, path, "a time row") + 1
        if kind == "half":
            return _called_in(state, HALF, path, "a token half") + 1
        if kind == "context":
            return CONDITION + 1
        if kind == "patches":  # x's patches unless the LR's are being embedded (in_half CONDITION)
            return 2 if state.extra.get(HALF) == CONDITION else 1
        layout = _called_in(state, TOKENS, path, "a block's token layout") if kind == "block" else LAYOUTS[kind](state)
        return [(row + 1, count) for row, count in layout]

    return split


def trains_dual_branch_lora(model_patcher) -> bool:
    """Train SR LoRA makes a dual-branch LoRA of a MODEL through the patch (every family it takes)."""
    return dual_patch_family(model_patcher) in DUAL_LORA_FAMILIES


def dual_branch_splits(diffusion_model, spec: LoraSpec, prefix: str = "") -> dict:
    """{prefix + path: split} of the Linear layers of the diffusion model that `spec.target_modules` names
    (peft's suffix rule); a named layer a dual-branch LoRA cannot split raises, naming it."""
    family = family_of(diffusion_model)
    if family not in DUAL_LORA_FAMILIES:
        raise ValueError(f"OneStep SR: a dual-branch LoRA trains on FLUX.1, SD3, Qwen-Image and Lumina 2 through the "
                         f"Dual-Branch Patch, not on {family.name}")
    splits, refused = {}, []
    for name, module in diffusion_model.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name == t or name.endswith(f".{t}")
                                                       for t in spec.target_modules):
            kind = layer_kind(family, name)
            if kind is None:
                refused.append(name)
            else:
                splits[prefix + name] = patch_split(kind, name)
    if refused:
        raise ValueError(f"Train SR LoRA: target_modules {list(spec.target_modules)} name layers a dual-branch LoRA "
                         f"cannot split by token ({', '.join(refused[:6])}: time embedders see the times, and "
                         "pooled-vector embedders one vector that feeds both time rows, not the tokens); leave them "
                         "out (empty target_modules: the attention, MLP and modulation layers)")
    if not splits:
        raise ValueError(f"Train SR LoRA: target_modules {list(spec.target_modules)} match no linear layer of the "
                         f"{family.name} model")
    return splits


class DualBranchLoRATrainer(AdversarialLoRATrainer):
    """AdversarialLoRATrainer with a dual-branch LoRA (adapters/dual_lora.py) on the layers of `splits`
    ({path in net: split}) instead of peft's; `export` writes the ``dual_branch`` file layout."""

    def __init__(self, net, spec, *args, splits: dict, **kwargs):
        self.splits = splits
        super().__init__(net, spec, *args, **kwargs)

    def add_adapter(self, net, spec) -> None:
        add_dual_branch_lora(net, spec, self.splits)

    def has_adapter(self, net) -> bool:
        return bool(dual_branch_layers(net))

    def save_adapter(self, path, source, file_format, prefix, metadata, overwrite):
        if file_format != "comfy":
            raise ValueError("a dual-branch LoRA is written in the dual_branch layout only (file_format 'comfy')")
        return save_dual_branch_lora(path, source, self.spec, prefix=prefix, metadata=metadata, overwrite=overwrite)
