"""The default SR network: a small two-time flow map on a space-to-depth view.

``net(x, t, s, cond) -> u``: the average velocity of the jump t -> s (samplers/flow_map.py) for the
image-space state ``x`` (in [-1, 1], at the output size). The state is pixel-unshuffled by
``stride`` (stacked with ``cond`` when ``condition=True``), a stack of diffusers
``ResnetBlock2D`` blocks runs at 1/stride of the resolution (the issue's "learn per FLOP":
about 10x cheaper than the same width at full resolution), and its output is pixel-shuffled
back. The two times enter every block through diffusers' sinusoidal ``Timesteps`` and
``TimestepEmbedding``: t and the family's second time input (d = t - s for "shortcut", s for
"two_time"). There is no scale input: one model serves x4 and x8.

What the blocks change, and why:
- ReLU, not the blocks' default SiLU: measured on this data, one-step regression with L1, lr
  1e-3, x4, 1000 steps: +0.64 dB over bicubic with ReLU, +0.41 dB with SiLU (a plain EDSR-style
  conv-ReLU-conv stack of the same width: +0.61 / +0.46); MODEL.md has the numbers.
- no GroupNorm (the blocks' norms are identities): normalising a residual SR network removes
  the local contrast it must reconstruct (EDSR, Lim et al. 2017); measured on this data, one-step
  regression for 450 steps: +0.26 dB over bicubic at x4 without the norms, +0.16 dB with them,
  +0.04 to +0.12 dB for a 3-level UNet2DModel of the same cost.
- no down-sampling and no attention: SR needs local context (8 blocks see 132 output pixels),
  and self-attention over the whole image costs time quadratic in its size (0.54 s of a 1.8 s
  x4 upscale to 1024^2 on one thread) and makes a tile's result depend on the tile size.

Why the default model has ``condition=False``: in start mode 'lr' the source x1 IS the upsampled
LR image, so it reaches the network as the state x at t = 1. Giving it a second time as a
condition makes training degenerate: for every t < 1 the HR image is read off exactly,
x0 = (x_t - t * cond) / (1 - t), so only samples drawn at exactly t = 1 teach super-resolution
(measured: +0.02 dB over bicubic after 400 steps). Without the extra condition the LR reaches
the network only through x_t, as in FlowSR and InDI; ``cond`` is then accepted for the common
interface and ignored. ``source_noise`` (config; `pipeline.lr_source`) adds seeded Gaussian
noise to the source, as the SD x4 upscaler's noise augmentation does; the shipped model uses
none.

Any image size works: the input is reflect-padded to a multiple of the stride and the output
cropped back, so tiles of any size work too.

``operations`` (a namespace with ``Conv2d`` and ``Linear``, such as ComfyUI's ``comfy.ops``
classes) replaces the torch layers the blocks build: ComfyUI's manual casting, fp16/bf16 weights
and low-VRAM offloading then reach every convolution, as they reach its native models' layers.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import ResnetBlock2D
from einops import rearrange
from torch import nn

from ..files.tensors import load_tensors, save_tensors, unprefixed
from ..samplers.flow_map import time_inputs

CONFIG_KEY = "onestep_sr_config"
# Times in [0, 1] are spread over the sinusoidal embedding's usual 0..1000 range.
TIME_SCALE = 1000.0
NET_FAMILIES = ("shortcut", "two_time")
TIME_FEATURES = 64  # sinusoidal features per time input


class FlowMapSRNet(nn.Module):
    """Two-time flow-map SR network; ``config`` (JSON-able) rebuilds it exactly."""

    def __init__(self, channels: int = 3, stride: int = 4, width: int = 64, blocks: int = 8,
                 family: str = "shortcut", condition: bool = False, source_noise: float = 0.0,
                 activation: str = "relu", *, operations=None, device=None, dtype=None):
        super().__init__()
        if family not in NET_FAMILIES:
            raise ValueError(f"family must be one of {NET_FAMILIES}, got {family!r}")
        self.config = {"channels": channels, "stride": stride, "width": width, "blocks": blocks,
                       "family": family, "condition": condition, "source_noise": source_noise,
                       "activation": activation}
        self.family = family
        self.stride = stride
        self.condition = condition
        # the std of the Gaussian noise added to the LR source (pipeline.lr_source); not used here
        self.source_noise = source_noise
        embedding = 2 * TIME_FEATURES
        self.time_proj = Timesteps(TIME_FEATURES, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(embedding, embedding)
        self.conv_in = nn.Conv2d((2 if condition else 1) * channels * stride**2, width, 3, padding=1)
        self.blocks = nn.ModuleList(
            ResnetBlock2D(in_channels=width, out_channels=width, temb_channels=embedding, groups=1,
                          non_linearity=activation)
            for _ in range(blocks))
        for block in self.blocks:
            block.norm1 = block.norm2 = nn.Identity()  # see the module docstring
        self.conv_out = nn.Conv2d(width, channels * stride**2, 3, padding=1)
        # u = 0 at initialisation: the one-step sample starts as the bicubic upscale itself.
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        if operations is not None:
            rebuild_layers(self, operations, device, dtype)
        self.to(device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                cond: torch.Tensor) -> torch.Tensor:
        if self.condition and (cond is None or cond.shape != x.shape):
            raise ValueError("cond must be the upsampled LR image with the same shape as x "
                             f"{tuple(x.shape)}; got {None if cond is None else tuple(cond.shape)}")
        batch = x.shape[0]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(batch)
        s = torch.as_tensor(s, dtype=x.dtype, device=x.device).reshape(-1).expand(batch)
        times = time_inputs(self.family, t, s)
        second = times["d"] if self.family == "shortcut" else times["s"]
        features = torch.cat([self.time_proj(times["t"] * TIME_SCALE), self.time_proj(second * TIME_SCALE)], dim=1)
        embedding = self.time_embedding(features.to(x.dtype))
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.stride, -width % self.stride
        stacked = torch.cat([x, cond], dim=1) if self.condition else x
        if pad_h or pad_w:
            # reflect needs the pad to be smaller than the side; tiny inputs fall back to replicate
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            stacked = F.pad(stacked, (0, pad_w, 0, pad_h), mode=mode)
        hidden = self.conv_in(rearrange(stacked, "b c (h p) (w q) -> b (c p q) h w", p=self.stride, q=self.stride))
        for block in self.blocks:
            hidden = block(hidden, embedding)
        u = rearrange(self.conv_out(hidden), "b (c p q) h w -> b c (h p) (w q)", p=self.stride, q=self.stride)
        return u[..., :height, :width]


def deepened(net: FlowMapSRNet, blocks: int) -> FlowMapSRNet:
    """A copy of `net` with residual blocks appended up to `blocks`, computing exactly what `net`
    computes: each new block's last convolution starts at zero, so the block passes its input on
    unchanged until training moves it (a function-preserving warm start for a deeper network)."""
    if blocks < len(net.blocks):
        raise ValueError(f"deepened() adds blocks: the network has {len(net.blocks)}, asked for {blocks}")
    grown = FlowMapSRNet(**{**net.config, "blocks": blocks})
    state = grown.state_dict()
    state.update(net.state_dict())
    for index in range(len(net.blocks), blocks):
        for name in ("weight", "bias"):
            state[f"blocks.{index}.conv2.{name}"].zero_()
    grown.load_state_dict(state)
    return grown.to(next(net.parameters()).device)


def rebuild_layers(module: nn.Module, operations, device=None, dtype=None) -> None:
    """Swap every torch Conv2d / Linear inside `module` for `operations`' class of the same shape (its
    weights are left for the caller to load: ComfyUI's operations skip initialisation)."""
    for name, child in module.named_children():
        if type(child) is nn.Conv2d:
            layer = operations.Conv2d(child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                                      padding=child.padding, dilation=child.dilation, groups=child.groups,
                                      bias=child.bias is not None, padding_mode=child.padding_mode,
                                      device=device, dtype=dtype)
        elif type(child) is nn.Linear:
            layer = operations.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                      device=device, dtype=dtype)
        else:
            rebuild_layers(child, operations, device, dtype)
            continue
        setattr(module, name, layer)


def config_settings() -> set[str]:
    """The names of the settings a FlowMapSRNet config holds (its constructor's architecture arguments)."""
    return {name for name, parameter in inspect.signature(FlowMapSRNet).parameters.items()
            if parameter.kind is parameter.POSITIONAL_OR_KEYWORD}


def save_model(net: FlowMapSRNet, path: str, metadata: dict | None = None) -> None:
    """Weights to safetensors (atomic write), the architecture config and `metadata` (JSON
    values) in the file's metadata, so that `load_model` needs nothing but the file."""
    save_tensors(path, net.state_dict(), {**(metadata or {}), CONFIG_KEY: net.config})


def load_model(path: str, device: str | torch.device = "cpu") -> FlowMapSRNet:
    """A FlowMapSRNet rebuilt from a safetensors file whose metadata holds its config: weights
    written by `save_model` or the trainer's `export_weights`, or a training checkpoint (its
    EMA weights are used)."""
    state, metadata = load_tensors(path)
    if any(key.startswith("ema.") for key in state):
        state = unprefixed("ema", state)
    if CONFIG_KEY not in metadata:
        raise ValueError(f"{path} has no {CONFIG_KEY!r} metadata: it is not a OneStep SR default "
                         "model file (write it with onestep_sr.models.flow_map_sr.save_model)")
    # a file of an older layout: say so, rather than torch's list of every missing tensor (or, for a
    # config that lacks a setting such as the activation, a network that computes something else)
    config = metadata[CONFIG_KEY]
    settings = config_settings()
    if set(config) != settings:
        raise ValueError(f"{path} has a config with settings {sorted(config)}, this version's network takes "
                         f"{sorted(settings)}: it was written by another version of OneStep SR; use the weights "
                         "shipped with this version")
    net = FlowMapSRNet(**config)
    expected = set(net.state_dict())
    unexpected, missing = sorted(set(state) - expected), sorted(expected - set(state))
    if unexpected or missing:
        raise ValueError(f"{path} does not fit the network its config describes (unexpected tensors "
                         f"{unexpected[:3]}, missing {missing[:3]}): it was written by another version "
                         "of OneStep SR; use the weights shipped with this version")
    net.load_state_dict(state)
    return net.to(device).eval()
