"""The layer patches of the dual-branch patch (bridge/dual_branch.py): shallow copies of ComfyUI's own
modules and wrapped methods that behave exactly like the originals unless the patch's wrapper has set
`STATE` for the call in progress. What each does is in bridge/dual_branch.py's docstring."""

from __future__ import annotations

import contextvars
import copy
from dataclasses import dataclass, field

import comfy.ldm.flux.layers
import torch

NOISE, CONDITION = 0, 1  # the rows of the two-row time vector: target-time (s) and current-time (t) branch
# Lumina 2 / Z-Image blocks gate with tanh(gate); tanh of this is exactly 1 in float32, bf16 and fp16.
SATURATED_GATE = 30.0
ROW = "row"  # DualState.extra: the time row the layers being called see (`in_row`)
HALF = "half"  # ... the token half they see whole (SD3's per-half steps, Lumina 2's LR patches: `in_half`)
TOKENS = "tokens"  # ... a Lumina 2 block's token layout [(row, count), ...] while it runs


@dataclass
class DualState:
    """What the wrapper tells the patched modules about the call in progress."""

    s: torch.Tensor          # the target time, in the model's timestep units, shaped like its timesteps
    noise_tokens: int
    condition_tokens: int
    text_tokens: int
    transformer_options: dict
    condition: torch.Tensor | None = None   # the LR latent as the diffusion model sees x (SD3, Lumina 2)
    extra: dict = field(default_factory=dict)  # per-call scratch of the Lumina 2 block patches


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


def in_row(state: DualState, row: int, call, *args):
    """call(*args) with `state` telling the layers inside that they see row `row` of the time vector (a
    dual-branch LoRA on a modulation layer then applies branch row + 1: bridge/dual_branch_lora.py)."""
    previous = state.extra.get(ROW)
    state.extra[ROW] = row
    try:
        return call(*args)
    finally:
        state.extra[ROW] = previous


def in_half(state: DualState, half: int, call, *args):
    """call(*args) with `state` telling the layers inside that they see token half `half` (NOISE: the noise
    tokens, CONDITION: the condition tokens) on its own, modulated by its own time row `half`."""
    previous = state.extra.get(HALF)
    state.extra[HALF] = half
    try:
        return in_row(state, half, call, *args)
    finally:
        state.extra[HALF] = previous


def _row_forward(self, original, *args, **kwargs):
    """Select one row of a two-row vector argument (outside the wrapper: unchanged)."""
    args = list(args)
    value = args[self.row_arg]
    state = STATE.get()
    if state is not None and value.ndim == 3:
        args[self.row_arg] = value[:, self.row]
        return in_row(state, self.row, lambda: original(*args, **kwargs))
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
    for name in ("weight", "bias"):  # new zero tensors: no in-place write to inference or float8 weights
        value = getattr(last, name)
        if value is not None:
            setattr(last, name, torch.nn.Parameter(torch.zeros(value.shape, dtype=value.dtype, device=value.device),
                                                   requires_grad=False))
    for parameter in residual.parameters():
        parameter.requires_grad_(False)
    return _patched(module, "DualTime", _time_forward, {"second": residual}, second_inputs=second_inputs)


def _modulation_forward(self, original, vec):
    """FLUX's Modulation: two-row parameters spread over the tokens of the stream this layer modulates. Each
    row goes through the layer on its own, as the base model's [B, D] vector does (the same arithmetic)."""
    state = STATE.get()
    if state is None or vec.ndim != 3:
        return original(vec)
    per_row = [in_row(state, row, original, vec[:, row]) for row in (NOISE, CONDITION)]
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


def _per_row_forward(self, original, x):
    state = STATE.get()
    if state is None or x.ndim != 3 or x.shape[1] != 2:
        return original(x)
    rows = []
    for row in (NOISE, CONDITION):
        out = in_row(state, row, original, x[:, row])  # an ODTSR layer inside answers both branches for 2-D
        rows.append(out[:, row] if out.ndim == 3 else out)
    return torch.stack(rows, dim=1)


def with_rows_separately(module):
    """A modulation module fed a two-row vector [B, 2, D] one row at a time (the base model's own
    arithmetic for each row); a dual-branch LoRA inside gives row r its branch r + 1."""
    return _patched(module, "PerRow", _per_row_forward)


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




# ---------------------------------------------------------------- SD3 / MMDiT

class Halves(tuple):
    """(noise part, condition part) of a block intermediate the x block hands from pre- to post-attention."""


def split_pre_attention(original):
    """An MMDiT x block's pre_attention(x, c) (or pre_attention_x) run once per token half with its own
    row of the two-row vector; the halves' q, k, v are joined along the tokens, the intermediates kept
    per half (`Halves`) for `split_post_attention`. Every step in it is per token, so this is the
    block's own arithmetic with two modulations. Each half's call runs `in_half`, so a dual-branch LoRA
    layer inside (adaLN, qkv, proj, MLP) gives it that half's branch."""

    def pre_attention(x, c):
        state = STATE.get()
        if state is None or c.ndim != 3:
            return original(x, c)
        if not state.condition_tokens:
            return in_half(state, NOISE, original, x, c[:, NOISE])
        n = state.noise_tokens
        noise = in_half(state, NOISE, original, x[:, :n], c[:, NOISE])
        condition = in_half(state, CONDITION, original, x[:, n:], c[:, CONDITION])
        *qkvs, intermediates = zip(noise, condition)
        joined = [tuple(torch.cat(pair, dim=1) for pair in zip(*qkv)) for qkv in qkvs]
        return (*joined, tuple(Halves(pair) for pair in zip(*intermediates)))

    return pre_attention


def split_post_attention(original, attention_outputs: int):
    """The x block's post_attention(attn..., *intermediates) per token half (see `split_pre_attention`)."""

    def post_attention(*args):
        state = STATE.get()
        if state is None or not args:
            return original(*args)
        if not isinstance(args[attention_outputs], Halves):  # no condition tokens: all of x is the noise half
            return in_half(state, NOISE, original, *args)
        n = state.noise_tokens
        attention, intermediates = args[:attention_outputs], args[attention_outputs:]
        parts = [in_half(state, NOISE, original, *[a[:, :n] for a in attention], *[i[0] for i in intermediates]),
                 in_half(state, CONDITION, original, *[a[:, n:] for a in attention], *[i[1] for i in intermediates])]
        return torch.cat(parts, dim=1)

    return post_attention


def with_condition_row(original):
    """A (context) block method f(x, c) fed row CONDITION of a two-row c."""

    def method(x, c):
        state = STATE.get()
        if state is None or c.ndim != 3:
            return original(x, c)
        return in_row(state, CONDITION, original, x, c[:, CONDITION])

    return method


def _final_forward(self, original, x, c, *args, **kwargs):
    state = STATE.get()
    if state is None or c.ndim != 3:
        return original(x, c, *args, **kwargs)
    x = x[:, :x.shape[1] - state.condition_tokens]
    return in_half(state, NOISE, lambda: original(x, c[:, NOISE], *args, **kwargs))


def with_noise_final(module):
    """A final layer that drops the condition tokens (the last ones) and takes row NOISE: its layers compute
    the noise half (Lumina 2's also carries the text tokens, which unpatchify drops)."""
    return _patched(module, "NoiseFinal", _final_forward)


def _embed_forward(self, original, x, *args, **kwargs):
    out = original(x, *args, **kwargs)
    state = STATE.get()
    if state is None or state.condition is None:
        return out
    return torch.cat([out, original(state.condition.to(x), *args, **kwargs)], dim=1)


def with_condition_tokens(module):
    """SD3's patch embedder: the LR latent's tokens appended after x's."""
    return _patched(module, "ConditionTokens", _embed_forward)


def repeated_positions(original):
    """SD3's cropped_pos_embed: the noise tokens' position embedding again for the condition tokens."""

    def cropped_pos_embed(hw, device=None):
        pos = original(hw, device=device)
        state = STATE.get()
        return pos if state is None or state.condition is None else torch.cat([pos, pos], dim=1)

    return cropped_pos_embed


# ---------------------------------------------------------------- Lumina 2 / Z-Image

def _lumina_block_forward(self, original, x, x_mask, freqs_cis, adaln_input=None, transformer_options={}):
    """A NextDiT block on [(text |) noise | condition] tokens with per-token modulation.

    The block's own adaLN layer is asked for a neutral modulation (scale 0, gates whose tanh is 1) and
    its four RMSNorms (patched, `with_lumina_norm`) apply each token's row instead, which is the
    block's arithmetic (x * (1 + scale), tanh(gate) * y) with the rows spread over the tokens. The
    first noise-refiner block also appends the condition tokens, and every block gives them the noise
    tokens' RoPE frequencies. The adaLN layer computes each row under `in_row`, and the block's token
    layout is in ``state.extra[TOKENS]`` while it runs (for the dual-branch LoRA layers that see the
    whole sequence: attention qkv / out, feed-forward)."""
    state = STATE.get()
    if state is None or adaln_input is None or adaln_input.ndim != 3:
        return original(x, x_mask, freqs_cis, adaln_input, transformer_options=transformer_options)
    extra = state.extra
    if self.inject and "noise_span" not in extra:  # the first noise-refiner block: x's tokens (and padding)
        extra["noise_span"] = x.shape[1]
        if state.condition is not None:
            x = torch.cat([x, extra["embed_condition"]().to(x)], dim=1)
    span = extra.get("noise_span", x.shape[1])
    condition = x.shape[1] - freqs_cis.shape[1]
    start = freqs_cis.shape[1] - span  # the text tokens before the noise tokens (0 in the noise refiner)
    if condition:
        freqs_cis = torch.cat([freqs_cis, freqs_cis[:, start:start + condition]], dim=1)
    rows = [in_row(state, row, original_modulation, self, adaln_input[:, row]).chunk(4, dim=1)
            for row in (NOISE, CONDITION)]
    layout = [(CONDITION, start), (NOISE, span), (CONDITION, condition)]
    extra["modulation"] = [rows_to_tokens(torch.stack([a, b], dim=1), layout) for a, b in zip(*rows)]
    extra[TOKENS] = layout  # for the dual-branch LoRA layers inside (attention, feed-forward)
    try:
        return original(x, x_mask, freqs_cis, adaln_input[:, NOISE], transformer_options=transformer_options)
    finally:
        extra.pop("modulation")
        extra.pop(TOKENS)


def original_modulation(block, adaln_input):
    """The block's adaLN layer as ComfyUI made it (under the `with_neutral_modulation` patch)."""
    module = block.adaLN_modulation
    return super(type(module), module).forward(adaln_input) if getattr(module, "neutral", False) else module(adaln_input)


def _neutral_forward(self, original, adaln_input):
    state = STATE.get()
    if state is None or "modulation" not in state.extra:
        return original(adaln_input)
    scale = torch.zeros_like(state.extra["modulation"][0][:, 0])
    gate = torch.full_like(scale, SATURATED_GATE)
    return torch.cat([scale, gate, scale, gate], dim=1)


def with_neutral_modulation(module):
    return _patched(module, "Neutral", _neutral_forward, neutral=True)


def _norm_forward(self, original, x):
    out = original(x)
    state = STATE.get()
    if state is None or "modulation" not in state.extra:
        return out
    value = state.extra["modulation"][self.slot]
    return out * (1 + value) if self.slot in (0, 2) else value.tanh() * out


def with_lumina_norm(module, slot: int):
    """An RMSNorm of a NextDiT block applying modulation `slot` (0 scale_msa, 1 gate_msa, 2 scale_mlp,
    3 gate_mlp) per token inside a `_lumina_block_forward` call."""
    return _patched(module, "TokenModulated", _norm_forward, slot=slot)


def with_lumina_block(module, inject: bool):
    return _patched(module, "DualBranch", _lumina_block_forward, inject=inject)
