"""The players and losses of adversarial SR fine-tuning: GAN losses, R1, and two discriminators.

- "patch": a small PatchGAN on [image, condition] (image or latent space alike);
- "features": light heads on the frozen base network's own encoder features (the LoRA switched
  off; the approach of large one-step distillations, no second backbone in memory). The
  backbone sees the image moved to `feature_time` on the LR -> HR path.
"""

from __future__ import annotations

import contextlib
import re
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..adapters.lora import adapters_disabled
from ..samplers.flow_map import add_source, per_sample

GAN_LOSSES = ("hinge", "non_saturating")
DISCRIMINATORS = ("patch", "features")
# The blocks whose outputs the feature discriminator reads by default: a diffusers UNet's down and
# middle blocks, or the residual blocks of the default model (FlowMapSRNet.blocks).
ENCODER_BLOCK = re.compile(r"(^|\.)(down_blocks\.\d+|mid_block|blocks\.\d+)$")


# ---------------------------------------------------------------- losses


def discriminator_loss(real: list[torch.Tensor], fake: list[torch.Tensor], kind: str) -> torch.Tensor:
    """Mean over the discriminator's outputs (logit maps) of the D loss: hinge
    relu(1 - D(real)) + relu(1 + D(fake)), or non-saturating softplus(-D(real)) + softplus(D(fake))."""
    if kind == "hinge":
        terms = [F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake)]
    elif kind == "non_saturating":
        terms = [F.softplus(-r).mean() + F.softplus(f).mean() for r, f in zip(real, fake)]
    else:
        raise ValueError(f"gan_loss must be one of {GAN_LOSSES}, got {kind!r}")
    return torch.stack(terms).mean()


def generator_loss(fake: list[torch.Tensor], kind: str) -> torch.Tensor:
    """The generator's side: -D(fake) (hinge) or softplus(-D(fake)) (non-saturating)."""
    if kind == "hinge":
        terms = [-f.mean() for f in fake]
    elif kind == "non_saturating":
        terms = [F.softplus(-f).mean() for f in fake]
    else:
        raise ValueError(f"gan_loss must be one of {GAN_LOSSES}, got {kind!r}")
    return torch.stack(terms).mean()


def r1_penalty(real_logits: list[torch.Tensor], real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al.): E ||grad_x D(x)||^2 on real images (`real` must require grad)."""
    total = sum(logits.sum() for logits in real_logits)
    (grad,) = torch.autograd.grad(total, real, create_graph=True)
    return grad.float().square().flatten(1).sum(1).mean()


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Parameters of `module` take no gradient inside the block (gradients still reach the input)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


# ---------------------------------------------------------------- discriminators


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al.): strided convolutions over [x, cond] -> one logit per patch.

    channels: channels of x (3 for images, the latent channels for latents); cond, when given,
    has the same shape as x and is stacked on the channels (a conditional discriminator)."""

    def __init__(self, channels: int = 3, conditional: bool = True, width: int = 64, layers: int = 3):
        super().__init__()
        if layers < 1 or width < 1:
            raise ValueError(f"PatchDiscriminator needs layers >= 1 and width >= 1, got {layers}, {width}")
        self.conditional = conditional
        blocks, c_in = [], channels * (2 if conditional else 1)
        for i in range(layers):
            c_out = width * 2 ** min(i, 3)
            blocks += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1),
                       *([nn.GroupNorm(min(32, c_out // 4), c_out)] if i else []), nn.LeakyReLU(0.2)]
            c_in = c_out
        blocks.append(nn.Conv2d(c_in, 1, 3, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None, backbone: nn.Module | None = None) -> list[torch.Tensor]:
        if self.conditional:
            if cond is None or cond.shape != x.shape:
                raise ValueError("a conditional PatchDiscriminator needs cond with the shape of x "
                                 f"{tuple(x.shape)}; got {None if cond is None else tuple(cond.shape)}")
            x = torch.cat([x, cond], dim=1)
        return [self.net(x)]


def capture_outputs(backbone: nn.Module, modules: Sequence[str], run: Callable[[], object]) -> list[torch.Tensor]:
    """Outputs of the named submodules of `backbone` during run() (first element of tuples)."""
    found = dict(backbone.named_modules())
    missing = [name for name in modules if name not in found]
    if missing:
        raise ValueError(f"feature modules {missing} are not in {type(backbone).__name__}")
    features: dict[str, torch.Tensor] = {}

    def hook(name):
        def store(_module, _inputs, output):
            features[name] = output[0] if isinstance(output, (tuple, list)) else output
        return store

    handles = [found[name].register_forward_hook(hook(name)) for name in modules]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return [features[name] for name in modules]


def encoder_blocks(net: nn.Module) -> tuple[str, ...]:
    """The down and middle blocks of a diffusers-style UNet inside `net`, or its residual `blocks`."""
    names = tuple(name for name, _ in net.named_modules() if ENCODER_BLOCK.search(name))
    if not names:
        raise ValueError(f"{type(net).__name__} has no down_blocks / mid_block / blocks: name the discriminator's "
                         "feature_modules explicitly")
    return names


class _Times(nn.Module):
    """Parametrization w = stored * factor (with Adam, the layer learns `factor` times faster)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, stored):
        return stored * self.factor


def faster(layer: nn.Module, factor: float) -> nn.Module:
    """`layer` with the same initial weights and `factor` times the optimizer's learning rate
    (equalised-learning-rate style): the discriminator's own rate without a second optimizer."""
    if factor != 1.0:
        for name in ("weight", "bias"):
            if getattr(layer, name, None) is not None:
                with torch.no_grad():
                    getattr(layer, name).div_(factor)
                parametrize.register_parametrization(layer, name, _Times(factor))
    return layer


def _head(channels: int, hidden: int, tokens: bool, lr_multiplier: float) -> nn.Module:
    """A light discriminator head: per position (pixel or token) a small MLP to one logit. No
    normalisation layer: texture shows in the features' magnitude, which a norm would remove."""
    if tokens:
        layers = [nn.Linear(channels, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1)]
    else:
        layers = [nn.Conv2d(channels, hidden, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(hidden, 1, 1)]
    return nn.Sequential(*(faster(layer, lr_multiplier) for layer in layers))


class FeatureDiscriminator(nn.Module):
    """Light heads on a frozen backbone's features: the backbone is the generator's own network
    with its LoRA switched off, passed at call time (the discriminator stores only the heads).

    The backbone `net(x, t, s, cond)` sees x moved to `feature_time` on the path towards cond,
    ``add_source(x, cond, t)``, at s = t; the outputs of `feature_modules` ([B, C, H, W] maps or
    [B, N, C] token sequences; default: `encoder_blocks`) each feed one head. `probe` is a (x, cond) pair of the shapes the
    backbone takes, used once (filled with seeded noise) to size and scale the heads.
    lr_multiplier: the heads learn this many times faster than the generator's LoRA (they start
    from scratch on subtle feature differences; two time-scale updates, one optimizer).
    """

    def __init__(self, backbone: nn.Module, probe: tuple[torch.Tensor, torch.Tensor],
                 feature_modules: Sequence[str] | None = None, feature_time: float = 0.25,
                 hidden: int = 64, lr_multiplier: float = 5.0):
        super().__init__()
        if not 0.0 <= feature_time < 1.0:
            raise ValueError(f"feature_time must lie in [0, 1), got {feature_time}")
        self.feature_modules = tuple(feature_modules) if feature_modules else encoder_blocks(backbone)
        self.feature_time = feature_time
        generator = torch.Generator().manual_seed(0)
        x, cond = (torch.randn(p.shape, generator=generator).to(p) for p in probe)
        with torch.no_grad():
            features = self.features(backbone, x, cond)
        self.token_features = [f.ndim == 3 for f in features]
        # Each feature map is divided by its spread on a random probe, so every head starts on O(1)
        # inputs (the base's features are small: raw, a head would barely move at the trainer's lr).
        self.register_buffer("feature_scales", torch.stack([f.float().std().clamp(min=1e-6) for f in features]))
        self.heads = nn.ModuleList(_head(f.shape[-1] if tokens else f.shape[1], hidden, tokens, lr_multiplier)
                                   for f, tokens in zip(features, self.token_features))

    def features(self, backbone: nn.Module, x: torch.Tensor, cond: torch.Tensor) -> list[torch.Tensor]:
        t = torch.full((x.shape[0],), self.feature_time, device=x.device, dtype=x.dtype)
        x_t = add_source(x, cond, per_sample(t, x))
        with adapters_disabled(backbone):
            return capture_outputs(backbone, self.feature_modules, lambda: backbone(x_t, t, t, cond))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, backbone: nn.Module | None = None) -> list[torch.Tensor]:
        if backbone is None:
            raise ValueError("FeatureDiscriminator needs the backbone (the LoRA-carrying generator) at call time")
        features = self.features(backbone, x, cond)
        return [head(f / scale) for head, f, scale in zip(self.heads, features, self.feature_scales)]


def make_discriminator(kind: str, generator: nn.Module, probe: tuple[torch.Tensor, torch.Tensor],
                       **options) -> nn.Module:
    """A discriminator of `kind` for `generator` (features: its frozen base as backbone).
    probe: an (x, cond) pair of training shapes; options go to the discriminator class."""
    if kind == "patch":
        return PatchDiscriminator(channels=probe[0].shape[1], **options)
    if kind == "features":
        return FeatureDiscriminator(generator, probe, **options)
    raise ValueError(f"discriminator must be one of {DISCRIMINATORS}, got {kind!r}")
