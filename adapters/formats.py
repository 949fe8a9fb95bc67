"""Released SR adapter files: telling their layouts apart, reading them, and the layer maths they need
(pure PyTorch; files are read with files.tensors.read_safetensors).

Formats (`detect_format` tells them apart):

- ``comfy_kohya``: ComfyUI / kohya LoRA keys (``<module>.lora_down.weight`` / ``lora_up.weight`` /
  ``alpha``, ``lora_unet_<module_with_underscores>...``, LyCORIS variants). ComfyUI reads these.
- ``peft_diffusers``: peft / diffusers keys ``<module>.lora_A.weight`` / ``lora_B.weight``, with an
  optional peft adapter name (``lora_A.default.weight``) and prefixes such as ``base_model.model.``,
  ``unet.``, ``transformer.``. They carry no alpha: scaling = alpha / rank comes from a
  PEFT ``adapter_config.json`` beside the file, or alpha = rank (scaling 1).
- ``flowsr``: FlowSR's single file. Metadata key ``flowsr_checkpoint_metadata`` holds JSON
  ``{"fields": {"unet_rank", "unet_lora_target_modules", "vae_rank", "vae_lora_target_modules"},
  "tensor_names": {"unet_state_dict": {tensor key: original key}, "vae_state_dict": {...}}}``; the
  original keys are peft state-dict keys of the diffusers SD2.1 ``UNet2DConditionModel`` and of
  the ``AutoencoderKL`` (encoder adapter, peft adapter "default" or "vae_skip"). FlowSR's code
  builds ``LoraConfig(r=rank, target_modules=...)`` without lora_alpha, so peft's default
  alpha 8 applies: scaling 8 / rank (`PEFT_DEFAULT_ALPHA`).
- ``dual_branch``: two LoRAs per linear layer, ``<module>.lora_A1/lora_B1.weight`` on the first
  half of the token sequence (the noise tokens) and ``lora_A2/lora_B2`` on the second half (the
  condition tokens), as in ODTSR's released Qwen-Image weights (keys under ``pipe.dit.``, and a
  replacement VAE encoder under ``pipe.new_vae.``, in DiffSynth's QwenImageVAE names: `wan_vae_name`). A 2-D input (a modulation layer fed the
  time embedding) gets one output per branch, stacked as [B, 2, out]; the transformer block then
  modulates each half of its tokens with its own row (`halves_modulate`). The per-branch
  scaling is not stored in ODTSR's file: ODTSR's training code uses alpha1 = 0 and alpha2 = rank
  (noise branch off, condition branch at scaling 1), the defaults of `DualBranchLoRA`. The same
  layout is what Train SR LoRA writes on the Dual-Branch Patch of FLUX / SD3 / Qwen-Image / Lumina 2
  (adapters/dual_lora.py): its metadata ``onestep_sr_dual_branch`` holds the branch scalings and
  ``split: dual_branch_patch``, i.e. each layer splits its tokens by the patch's layout (text, noise
  and condition token counts; the time row of a modulation layer; the token half SD3's per-half steps
  compute) rather than in halves.
  ComfyUI's stock LoRA loader reads none of these keys (it applies nothing); Load SR Adapter reads them.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ADAPTER_FORMATS = ("comfy_kohya", "peft_diffusers", "flowsr", "dual_branch")
FLOWSR_METADATA_KEY = "flowsr_checkpoint_metadata"
FLOWSR_GROUPS = {"unet": "unet_state_dict", "vae": "vae_state_dict"}
PEFT_DEFAULT_ALPHA = 8.0
PEFT_CONFIG = "adapter_config.json"
DUAL_PARTS = ("lora_A1", "lora_B1", "lora_A2", "lora_B2")
# peft / diffusers LoRA keys: <module>.lora_A[.<adapter>].weight, <module>.lora.down.weight, ...
PEFT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])(\.(?P<adapter>[^.]+))?\.weight$")
DIFFUSERS_KEY = re.compile(r"^(?P<module>.+?)(\.lora|_lora)\.(?P<part>up|down)\.weight$")
DUAL_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_[AB][12])\.weight$")
# DiffSynth's QwenImageVAE (ODTSR's `pipe.new_vae`) names the Wan-2.1 encoder like diffusers'
# AutoencoderKLQwenImage; ComfyUI's Qwen-Image VAE is comfy.ldm.wan.vae.WanVAE. Both keep the
# encoder's residual / resample blocks in one flat list, so block indices carry over unchanged.
WAN_VAE_BLOCKS = ((re.compile(r"^encoder\.conv_in$"), "encoder.conv1"),
                  (re.compile(r"^encoder\.down_blocks\.(\d+)(?=\.|$)"), r"encoder.downsamples.\1"),
                  (re.compile(r"^encoder\.mid_block\.resnets\.0(?=\.|$)"), "encoder.middle.0"),
                  (re.compile(r"^encoder\.mid_block\.attentions\.0(?=\.|$)"), "encoder.middle.1"),
                  (re.compile(r"^encoder\.mid_block\.resnets\.1(?=\.|$)"), "encoder.middle.2"),
                  (re.compile(r"^encoder\.norm_out$"), "encoder.head.0"),
                  (re.compile(r"^encoder\.conv_out$"), "encoder.head.2"),
                  (re.compile(r"^quant_conv$"), "conv1"))
# inside a residual block: DiffSynth's named layers -> positions in WanVAE's `residual` Sequential
WAN_RESIDUAL_LAYERS = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
                       "conv_shortcut": "shortcut"}


def detect_format(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """Which of ADAPTER_FORMATS a file is in (see the module docstring)."""
    if FLOWSR_METADATA_KEY in metadata:
        return "flowsr"
    if any(DUAL_KEY.match(key) for key in tensors):
        return "dual_branch"
    if any(PEFT_KEY.match(key) or DIFFUSERS_KEY.match(key) for key in tensors):
        return "peft_diffusers"
    return "comfy_kohya"


@dataclass
class FlowSRCheckpoint:
    unet: dict[str, torch.Tensor]   # peft keys of the diffusers UNet
    vae: dict[str, torch.Tensor]    # peft keys of the diffusers AutoencoderKL (may be empty)
    fields: dict                    # unet_rank, unet_lora_target_modules, vae_rank, ...


def read_flowsr(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> FlowSRCheckpoint:
    """Split a FlowSR file into its UNet and VAE state dicts under their original key names."""

    def refuse(problem: str):
        raise ValueError(f"the {FLOWSR_METADATA_KEY!r} metadata {problem}: FlowSR's layout is a JSON object with "
                         "'fields' and 'tensor_names' -> 'unet_state_dict' / 'vae_state_dict' -> {stored tensor: "
                         "original key}; use the file FlowSR released, or choose the file's own format")

    try:
        payload = json.loads(metadata[FLOWSR_METADATA_KEY])
    except json.JSONDecodeError as err:
        refuse(f"is not JSON ({err})")
    if not isinstance(payload, dict):
        refuse(f"must be a JSON object, not a {type(payload).__name__}")
    names = payload.get("tensor_names", {})
    fields = payload.get("fields", {})
    for name, value in (("tensor_names", names), ("fields", fields)):
        if not isinstance(value, dict):
            refuse(f"holds {name!r} as a {type(value).__name__}: {name!r} must be an object")
    groups = {}
    for group, key in FLOWSR_GROUPS.items():
        stored_names = names.get(key, {})
        if not isinstance(stored_names, dict):
            refuse(f"holds {key!r} as a {type(stored_names).__name__}: {key!r} must be an object")
        missing = sorted(set(stored_names) - set(tensors))
        if missing:
            refuse(f"names tensor {missing[0]!r} under {key!r}, which the file does not hold "
                   f"({len(missing)} missing)")
        groups[group] = {original: tensors[stored] for stored, original in stored_names.items()}
    if not groups["unet"]:
        raise ValueError(f"the FlowSR file names no UNet tensors under {FLOWSR_METADATA_KEY!r} -> tensor_names -> "
                         "unet_state_dict")
    return FlowSRCheckpoint(unet=groups["unet"], vae=groups["vae"], fields=dict(fields))


def wan_vae_name(module: str) -> str | None:
    """ComfyUI's WanVAE module path for a DiffSynth QwenImageVAE encoder module path, or None when
    `module` is not one (the decoder is left out: ODTSR decodes with the original VAE)."""
    for pattern, replacement in WAN_VAE_BLOCKS:
        match = pattern.match(module)
        if match:
            block, rest = match.expand(replacement), module[match.end():].lstrip(".")
            if rest.split(".")[0] in WAN_RESIDUAL_LAYERS:
                layer, _, tail = rest.partition(".")
                rest = ".".join(filter(None, (WAN_RESIDUAL_LAYERS[layer], tail)))
            return ".".join(filter(None, (block, rest)))
    return None


def peft_config_beside(path: str | os.PathLike) -> dict | None:
    """The PEFT adapter_config.json in the folder of `path`, if there is one; a broken one raises
    ValueError naming it."""
    config = Path(path).with_name(PEFT_CONFIG)
    if not config.is_file():
        return None

    def refuse(problem: str):
        raise ValueError(f"{config} {problem}; fix it (peft writes it with save_pretrained) or delete it to load "
                         "the adapter at scaling 1 (alpha = rank)")

    try:
        parsed = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        refuse(f"is not valid JSON ({err})")
    if not isinstance(parsed, dict):
        refuse(f"must hold a JSON object, not a {type(parsed).__name__}")
    if not isinstance(parsed.get("alpha_pattern") or {}, dict):
        refuse("holds an alpha_pattern that is not an object of {pattern: alpha}")
    numbers = {"lora_alpha": parsed.get("lora_alpha", PEFT_DEFAULT_ALPHA), **(parsed.get("alpha_pattern") or {})}
    bad = [name for name, value in numbers.items() if isinstance(value, bool) or not isinstance(value, (int, float))]
    if bad:
        refuse(f"holds a non-numeric alpha for {bad[0]!r} (lora_alpha or alpha_pattern)")
    return parsed


def peft_pattern_key(patterns, module: str) -> str | None:
    """The first of `patterns` (regular expressions over module names, as peft's rank_pattern / alpha_pattern
    keys are) that matches the whole of `module` or a dotted suffix of it, as peft's get_pattern_key matches
    them; None when none does."""
    for pattern in patterns:
        try:
            if re.match(rf"(.*\.)?({pattern})$", module):
                return pattern
        except re.error as err:
            raise ValueError(f"alpha_pattern key {pattern!r} is not a regular expression ({err}); peft reads these "
                             "keys as regular expressions over module names: fix adapter_config.json") from None
    return None


def peft_alpha(config: dict | None, module: str, rank: int) -> float:
    """The alpha to store for `module` so that ComfyUI's alpha / rank equals peft's scaling:
    the config's lora_alpha (alpha_pattern as peft matches it, and rsLoRA honoured), else the rank."""
    if config is None:
        return float(rank)
    patterns = config.get("alpha_pattern") or {}
    key = peft_pattern_key(patterns, module)
    alpha = float(config.get("lora_alpha", PEFT_DEFAULT_ALPHA) if key is None else patterns[key])
    return alpha * rank ** 0.5 if config.get("use_rslora") else alpha


def to_comfy_lora(tensors: dict[str, torch.Tensor], alpha_of=None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """peft / diffusers LoRA keys rewritten as ComfyUI's ``<module>.lora_down/lora_up.weight`` (+ alpha
    from alpha_of(module, rank) when given); other keys pass through unchanged. Returns the
    rewritten dict and the peft adapter names seen (more than one is an error for the caller)."""
    out, adapters = {}, set()
    for key, value in tensors.items():
        match = PEFT_KEY.match(key)
        if match:
            if match["adapter"]:
                adapters.add(match["adapter"])
            part = "lora_down" if match["part"] == "A" else "lora_up"
        else:
            match = DIFFUSERS_KEY.match(key)
            part = match and f"lora_{match['part']}"
        if not match:
            out[key] = value
            continue
        module = match["module"]
        out[f"{module}.{part}.weight"] = value
        if alpha_of is not None and part == "lora_down":
            out[f"{module}.alpha"] = torch.tensor(float(alpha_of(module, value.shape[0])))
    return out, sorted(adapters)


def dual_branch_groups(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """({module: {lora_A1, lora_B1, lora_A2, lora_B2}}, keys that are not dual-branch LoRA);
    a module missing one of the four parts raises, naming it."""
    groups, others = {}, []
    for key, value in tensors.items():
        match = DUAL_KEY.match(key)
        if match:
            groups.setdefault(match["module"], {})[match["part"]] = value
        else:
            others.append(key)
    incomplete = {module: sorted(set(DUAL_PARTS) - set(parts)) for module, parts in groups.items()
                  if set(parts) != set(DUAL_PARTS)}
    if incomplete:
        shown = ", ".join(f"{m} lacks {p}" for m, p in list(incomplete.items())[:5])
        raise ValueError(f"dual-branch LoRA is incomplete: {shown} ({len(incomplete)} modules)")
    return groups, others


class DualBranchLoRA:
    """The two low-rank updates of one linear layer (cast to the input at use): plain tensors when a file
    is loaded, the trained parameters of `adapters.dual_lora.DualBranchLinear` while training (the same
    maths, so the loaded layer is the trained one).

    noise_scale / condition_scale: the branches' scalings (ODTSR: alpha1 / rank = 0, alpha2 / rank = 1).
    split: None for the halves rule (ODTSR's layer: branch 1 on the first half of the tokens, branch 2 on
    the second; a 2-D input gets both branches, stacked [B, 2, out]), else split(x) -> None (the halves
    rule), a branch (1 or 2: the whole input, e.g. one time row of a modulation layer) or
    [(branch, token count), ...] in sequence order (e.g. [text | noise | condition] tokens).
    """

    def __init__(self, parts, noise_scale: float = 0.0, condition_scale: float = 1.0, split=None):
        self.parts = parts
        self.scales = (noise_scale, condition_scale)
        self.split = split

    def delta(self, x: torch.Tensor, branch: int) -> torch.Tensor:
        down = self.parts[f"lora_A{branch}"].to(device=x.device, dtype=x.dtype)
        up = self.parts[f"lora_B{branch}"].to(device=x.device, dtype=x.dtype)
        return F.linear(F.linear(x, down), up) * self.scales[branch - 1]

    def apply(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """y = base(x) with the branch updates added (see the class and module docstrings)."""
        split = None if self.split is None else self.split(x)
        if isinstance(split, int):
            return y + self.delta(x, split)
        if split is None:
            if x.ndim == 2:
                return torch.stack([y + self.delta(x, 1), y + self.delta(x, 2)], dim=1)
            tokens = x.shape[-2]
            if tokens % 2:
                raise ValueError(f"a dual-branch LoRA layer got {tokens} tokens: it needs as many condition tokens "
                                 "as noise tokens (give the model one reference latent of the same size as the "
                                 "latent)")
            split = [(1, tokens // 2), (2, tokens // 2)]
        if sum(count for _, count in split) != x.shape[-2]:
            raise ValueError(f"a dual-branch LoRA layer got {x.shape[-2]} tokens where its split {split} counts "
                             f"{sum(count for _, count in split)}")
        parts, start = [], 0
        for branch, count in split:
            if count:
                end = start + count
                parts.append(y[..., start:end, :] + self.delta(x[..., start:end, :], branch))
                start = end
        return torch.cat(parts, dim=-2)


_DUAL_CLASSES: dict[type, type] = {}


def _dual_class(cls: type) -> type:
    if cls not in _DUAL_CLASSES:
        def forward(self, x, *args, **kwargs):
            return self.dual_branch.apply(x, super(subclass, self).forward(x, *args, **kwargs))
        subclass = type(f"DualBranch{cls.__name__}", (cls,), {"forward": forward})
        _DUAL_CLASSES[cls] = subclass
    return _DUAL_CLASSES[cls]


def with_dual_branch(module: torch.nn.Module, lora: DualBranchLoRA) -> torch.nn.Module:
    """A shallow copy of the linear `module` whose forward adds `lora`. The copy shares the
    module's parameter dict, so weight patches (other LoRAs, casts, offloading) made through
    either object reach the same weights."""
    patched = copy.copy(module)
    patched.__class__ = _dual_class(type(module))
    patched.dual_branch = lora
    return patched


def halves_modulate(original):
    """A block `_modulate(x, params)` that also takes per-branch params [B, 2, 3 * dim] (a dual-branch
    modulation layer's output): the first half of the tokens uses row 0, the second half row 1.
    [B, 3 * dim] params go to `original` unchanged."""

    def modulate(x: torch.Tensor, params: torch.Tensor):
        if params.ndim == 2:
            return original(x, params)
        half = x.shape[1] // 2
        shift, scale, gate = params.chunk(3, dim=-1)  # each [B, 2, dim]
        sizes = (half, x.shape[1] - half)
        expand = [torch.cat([p[:, i:i + 1].expand(-1, n, -1) for i, n in enumerate(sizes)], dim=1)
                  for p in (shift, scale, gate)]
        return torch.addcmul(expand[0], x, 1 + expand[1]), expand[2]

    return modulate
