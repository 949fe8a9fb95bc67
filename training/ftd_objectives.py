"""FluxSR's flow trajectory distillation (FTD): a one-step SR student distilled from a multi-step flow
teacher through (noise, image) pairs the teacher sampled offline (bridge/teacher_pairs.py writes them).

Time convention of the package (samplers/flow_map.py): t = 1 noise, t = 0 image, x_t = (1 - t) x0 + t x1.

A batch is ``{"x0": z_H, "x1": ε, "lr": z_L}`` (``"cond"`` stands in for ``"lr"`` when it is absent):
ε the noise the teacher started from, z_H the image latent its sampler made of it (so z_H = Φ_teacher(ε)),
z_L the LR latent of that image. FTD places the LR latent on the time axis at T_L (`lr_time`) and joins
three straight flows that share ε:

    teacher  (noise -> HR)   x_t = (1 - t) z_H + t ε,                              v_θ = ε - z_H
    noise -> LR, t ∈ [T_L, 1]  z_t = ((1 - t) z_L + (t - T_L) ε) / (1 - T_L),    u_t = dz_t/dt = (ε - z_L) / (1 - T_L)
    student  (LR -> HR), t ∈ [0, T_L]                                              v_φ

The path ε (t = 1) -> z_L (t = T_L) -> z_H (t = 0) covers the teacher's displacement ε - z_H, so its time-
weighted velocities add up to the teacher's: v_θ = (1 - T_L) u_t + T_L v_φ, i.e.

    v_φ = (v_θ - σ (1 - T_L) u_t) / T_L,        σ = `sign` = +1 (the identity; = (z_L - z_H) / T_L)

Measured from the noise end (T' = 1 - T_L) and with the roles of the two known velocities named the other
way round, this is the issue's v_φ = (u_t - T' v_θ) / (1 - T'). The published figure leaves the sign of
the LR term ambiguous, so σ is a parameter: σ = -1 reads it as v_φ = (v_θ + (1 - T_L) u_t) / T_L, which is
not the identity (tests/test_ftd.py shows it does not reach the teacher; report both).

The student is a one-time flow model (a native ComfyUI model with an SR LoRA), evaluated on the noise -> LR
path z_t and trained to the velocity whose one jump to t = 0 lands where the joined path ends,

    v*(z_t, t) = [(1 - t) T_L v_φ + (t - T_L) v_θ] / (t (1 - T_L)),       z_t - t v* = z_H  (σ = +1),
    L_FTD = E_t d(u_φ(z_t, t), sg(v*)),  t = T_L for a fraction `lr_fraction` of the batch, else t ~ U(T_L, 1),

which is v_φ at t = T_L (the one-step SR: z_H ≈ z_L - T_L u_φ(z_L, T_L), one Euler step of ComfyUI's
samplers from sigma T_L) and the teacher's own velocity v_θ at t = 1 (the prior is kept where the input is
pure noise). Everything on the right is data: no teacher network is held while the student trains.

`diversification_weight` > 0 adds FluxSR's attention-diversification loss (training/attention_diversity.py)
on the blocks named in `diversification_blocks` during the student's forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..samplers.flow_map import per_sample
from .attention_diversity import TokenSimilarity
from .losses import DISTANCES, uniform_times, unpack_batch

SIGNS = (1, -1)


def ftd_path(z_lr: torch.Tensor, noise: torch.Tensor, t, lr_time: float) -> torch.Tensor:
    """z_t on the noise -> LR path: ((1 - t) z_L + (t - T_L) ε) / (1 - T_L)  (t broadcast to the latents)."""
    return ((1 - t) * z_lr + (t - lr_time) * noise) / (1 - lr_time)


def student_velocity(z_hr, z_lr, noise, lr_time: float, sign: int = 1) -> torch.Tensor:
    """v_φ = (v_θ - σ (1 - T_L) u) / T_L with v_θ = ε - z_H and u = (ε - z_L) / (1 - T_L)."""
    teacher = noise - z_hr
    noise_to_lr = (noise - z_lr) / (1 - lr_time)
    return (teacher - sign * (1 - lr_time) * noise_to_lr) / lr_time


def ftd_target(z_hr, z_lr, noise, t, lr_time: float, sign: int = 1) -> torch.Tensor:
    """v*(z_t, t) = [(1 - t) T_L v_φ + (t - T_L) v_θ] / (t (1 - T_L))."""
    v_phi = student_velocity(z_hr, z_lr, noise, lr_time, sign)
    return ((1 - t) * lr_time * v_phi + (t - lr_time) * (noise - z_hr)) / (t * (1 - lr_time))


@dataclass
class FlowTrajectoryDistillation:
    """FluxSR's FTD (see the module docstring for the equations).

    lr_time: T_L in (0, 1), where the LR latent sits (and the sigma the one-step SR starts from).
    sign: σ = +1 (the identity) or -1 (the other reading of the paper's figure).
    lr_fraction: share of the batch trained exactly at t = T_L (the one-step SR); the rest t ~ U(T_L, 1).
    distance: "l2" or "l1" per sample.
    diversification_weight / diversification_blocks: the attention-diversification term and the block
    names (suffixes of module paths, comma-separated) it hooks.
    """

    lr_time: float = 0.5
    sign: int = 1
    lr_fraction: float = 0.5
    distance: str = "l2"
    diversification_weight: float = 0.0
    diversification_blocks: str = "double_blocks.0,single_blocks.0"
    name = "ftd"

    def __post_init__(self):
        if not 0.0 < self.lr_time < 1.0:
            raise ValueError(f"lr_time (T_L) must lie strictly between 0 and 1, got {self.lr_time}")
        if self.sign not in SIGNS:
            raise ValueError(f"sign must be +1 or -1, got {self.sign}")
        if not 0.0 <= self.lr_fraction <= 1.0:
            raise ValueError(f"lr_fraction must lie in [0, 1], got {self.lr_fraction}")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {sorted(DISTANCES)}, got {self.distance!r}")
        if self.diversification_weight < 0:
            raise ValueError(f"diversification_weight must be >= 0, got {self.diversification_weight}")

    def block_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.diversification_blocks.split(",") if name.strip())

    def times(self, n: int, like: torch.Tensor, generator) -> torch.Tensor:
        t = uniform_times(n, like, generator, self.lr_time, 1.0)
        at_lr = round(n * self.lr_fraction)
        t[:at_lr] = self.lr_time
        return t

    def __call__(self, net, batch, ema_net=None, generator=None):
        z_hr, noise, cond = unpack_batch(batch)
        z_lr = batch.get("lr", cond)
        if z_lr is None or z_lr.shape != z_hr.shape:
            raise ValueError("ftd: the batch needs 'lr' (or 'cond'), the LR latent, shaped like 'x0' (the "
                             "teacher's image latent); 'x1' is the teacher's noise")
        t = self.times(z_hr.shape[0], z_hr, generator)
        tb = per_sample(t, z_hr)
        z_t = ftd_path(z_lr, noise, tb, self.lr_time)
        with torch.no_grad():
            target = ftd_target(z_hr, z_lr, noise, tb, self.lr_time, self.sign)
        if self.diversification_weight > 0:
            with TokenSimilarity(net, self.block_names()) as similarity:
                u = net(z_t, t, torch.zeros_like(t), cond)
            diversity = similarity.value()
        else:
            u = net(z_t, t, torch.zeros_like(t), cond)
        ftd = DISTANCES[self.distance](u, target).mean()
        logs = {"ftd": ftd.item()}
        loss = ftd
        if self.diversification_weight > 0:
            loss = loss + self.diversification_weight * diversity
            logs["token_similarity"] = diversity.item()
        return loss, logs
