"""Adversarial fine-tuning of a LoRA adapter on a flow-map SR network (FlowMapSR's second stage).

    trainer = AdversarialLoRATrainer(base_net, LoraSpec(rank=8), AdversarialLoRA(), batches,
                                     TrainConfig(output_dir="runs/adv", steps=600),
                                     probe=(x, cond), discriminator="features")
    trainer.train()                                   # the project's Trainer: progress, resume, EMA
    trainer.export("sr_adv.safetensors")              # ComfyUI LoRA keys (adapters/lora.py)

The generator is the base network with a peft LoRA (base frozen). It makes the one-step (or
few-step) SR output from the source x1 of each batch, and its loss is

    L_G = w_rec * |fake - x0|_{1 or 2} + w_p * LPIPS_vgg(fake, x0) + w_adv * L_adv(D(fake)) + w_cons * L_consistency,

where L_consistency is a flow-map objective of training/objectives.py (default: Shortcut
self-consistency with its flow-matching part) on the same batch, with the EMA as its teacher, so
that multi-step sampling of the tuned network stays coherent. The discriminator
(training/discriminators.py) sees the SR output against the HR image, both with the LR condition.

D and G are trained by one optimizer step on the summed loss (simultaneous gradient descent):
the generator's adversarial term runs D with its parameters frozen, the discriminator's term on
the detached SR output, so neither term's gradient reaches the other player. GAN losses: hinge
or non-saturating; R1 (gradient penalty on real images) optional.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..adapters.lora import LoraSpec
from ..samplers.flow_map import denoised_from_velocity, per_sample, shifted_times
from ..samplers.sampling import flow_map_model, sample_flow_map
from .discriminators import (GAN_LOSSES, discriminator_loss, frozen, generator_loss, make_discriminator,
                             r1_penalty)
from .losses import unpack_batch
from .lora_training import LoRATrainer
from .objectives import make_objective
from .perceptual import check_window, sampled_perceptual
from .trainer import TrainConfig

# The consistency term by default, and the objective assumed for a base file that records none.
DEFAULT_CONSISTENCY = "shortcut"
RECONSTRUCTIONS = ("l1", "l2")


class AdversarialPair(nn.Module):
    """Generator and discriminator in one module for the Trainer (one optimizer, one EMA, one
    checkpoint). Called like the generator, so every flow-map objective runs on it unchanged."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module):
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator

    def forward(self, x, t, s, cond):
        return self.generator(x, t, s, cond)


# ---------------------------------------------------------------- objective


@dataclass
class AdversarialLoRA:
    """The generator + discriminator loss of one step (see the module docstring).

    sample_steps: jumps from t = 1 to 0 that make the SR output the discriminator sees (the
    earlier jumps without gradient, the last with it; 1 = one-step SR).
    consistency / consistency_options: the flow-map objective (training/objectives.py) and its
    options; consistency_weight 0 drops it.
    perceptual_weight: ST-LPIPS-VGG on the SR output (training/perceptual.py), on the last
    `perceptual_samples` of the batch in one random `perceptual_crop`² window; 0 leaves it out.
    """

    gan_loss: str = "hinge"
    adversarial_weight: float = 0.05
    reconstruction: str = "l1"
    reconstruction_weight: float = 1.0
    consistency: str = DEFAULT_CONSISTENCY
    consistency_options: dict = field(default_factory=dict)
    consistency_weight: float = 1.0
    r1_weight: float = 0.0
    sample_steps: int = 1
    perceptual_weight: float = 0.0
    perceptual_samples: int = 4
    perceptual_crop: int = 64
    name = "adversarial_lora"

    def __post_init__(self):
        if self.gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss must be one of {GAN_LOSSES}, got {self.gan_loss!r}")
        if self.reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"reconstruction must be one of {RECONSTRUCTIONS}, got {self.reconstruction!r}")
        weights = {"adversarial_weight": self.adversarial_weight, "reconstruction_weight": self.reconstruction_weight,
                   "consistency_weight": self.consistency_weight, "r1_weight": self.r1_weight,
                   "perceptual_weight": self.perceptual_weight}
        negative = [k for k, v in weights.items() if v < 0]
        if negative:
            raise ValueError(f"loss weights {negative} must be >= 0")
        if self.sample_steps < 1:
            raise ValueError(f"sample_steps must be >= 1, got {self.sample_steps}")
        check_window(self.perceptual_samples, self.perceptual_crop)
        self.consistency_objective = make_objective(self.consistency, **self.consistency_options)

    def sr_output(self, net, x1: torch.Tensor, cond) -> torch.Tensor:
        """The generator's SR output from the source x1 in `sample_steps` jumps (pseudo-x0 of the last)."""
        times = shifted_times(self.sample_steps, 1.0, 1.0).to(x1)
        x = x1
        if self.sample_steps > 1:  # the jumps before the last, without gradient, by the package's sampler
            x = sample_flow_map(flow_map_model(net, "two_time", cond), x1, times[:-1], disable=True,
                                family="two_time")
        t_last = times[-2].expand(x1.shape[0])
        u = net(x, t_last, torch.zeros_like(t_last), cond)
        return denoised_from_velocity(x, u, per_sample(t_last, x))

    def __call__(self, net, batch, ema_net=None, generator=None):
        x0, x1, cond = unpack_batch(batch)
        pair = net
        disc, backbone = pair.discriminator, pair.generator
        fake = self.sr_output(net, x1, cond)
        diff = fake - x0
        reconstruction = diff.abs().mean() if self.reconstruction == "l1" else diff.square().mean()
        with frozen(disc):
            g_adv = generator_loss(disc(fake, cond, backbone=backbone), self.gan_loss)

        real = x0.detach().requires_grad_(self.r1_weight > 0)
        # R1 differentiates D twice; the CPU flash-attention kernel has no double backward.
        with sdpa_kernel(SDPBackend.MATH) if self.r1_weight > 0 else contextlib.nullcontext():
            real_logits = disc(real, cond, backbone=backbone)
        fake_logits = disc(fake.detach(), cond, backbone=backbone)
        d_loss = discriminator_loss(real_logits, fake_logits, self.gan_loss)
        loss = (self.reconstruction_weight * reconstruction + self.adversarial_weight * g_adv + d_loss)
        logs = {"reconstruction": reconstruction.item(), "g_adv": g_adv.item(), "d_loss": d_loss.item(),
                "d_real": torch.stack([r.mean() for r in real_logits]).mean().item(),
                "d_fake": torch.stack([f.mean() for f in fake_logits]).mean().item()}
        if self.perceptual_weight > 0:
            perceptual = sampled_perceptual(fake, x0, generator, self.perceptual_samples, self.perceptual_crop)
            loss = loss + self.perceptual_weight * perceptual
            logs["lpips"] = perceptual.item()
        if self.r1_weight > 0:
            r1 = r1_penalty(real_logits, real)
            loss = loss + self.r1_weight / 2 * r1
            logs["r1"] = r1.item()
        if self.consistency_weight > 0:
            consistency, consistency_logs = self.consistency_objective(net, batch, ema_net=ema_net,
                                                                       generator=generator)
            loss = loss + self.consistency_weight * consistency
            logs.update({f"consistency_{k}": v for k, v in consistency_logs.items()})
        return loss, logs


# ---------------------------------------------------------------- trainer


class AdversarialLoRATrainer(LoRATrainer):
    """A LoRATrainer on (LoRA generator, discriminator) in one module: one optimizer, one EMA, one
    checkpoint; `export` writes the generator's adapter.

    probe: an (x, cond) pair of training shapes (sizes the discriminator).
    """

    def __init__(self, net: nn.Module, spec: LoraSpec, objective: AdversarialLoRA, batches,
                 config: TrainConfig, probe: tuple[torch.Tensor, torch.Tensor], discriminator: str = "features",
                 discriminator_options: dict | None = None, metadata: dict | None = None,
                 initial: str | None = None):
        self.discriminator_recipe = (discriminator, probe, discriminator_options or {})
        super().__init__(net, spec, objective, batches, config, metadata=metadata, initial=initial)

    def trained_module(self, net: nn.Module) -> nn.Module:
        kind, probe, options = self.discriminator_recipe
        return AdversarialPair(net, make_discriminator(kind, net, probe, **options))

    def recipe_extras(self) -> dict:
        kind, _, options = self.discriminator_recipe
        return {"discriminator": kind, "discriminator_options": options}

    def lora_network(self, module: nn.Module) -> nn.Module:
        return module.generator
