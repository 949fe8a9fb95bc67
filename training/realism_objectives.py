"""The seeds' realism objectives for a deterministic source (the upsampled LR image at t = 1; see
training/objectives.py for the contract), each checkable on a toy whose answer is known:

- `perceptual` (FlowMapSR): the trajectory endpoint regression plus ST-LPIPS-VGG;
- `tv_lpips` (FluxSR): the same plus a total-variation term;
- `timestep_rectification` (TEASR): one jump to 0 from every noise level, regressed on the data;
- `self_adversarial` (TEASR, TwinFlow-style): the model learns, on a negative-time branch, the flow
  of its own one-step samples and is rectified by the difference of real and fake velocities; no
  teacher and no discriminator;
- `teasr_any_step`: the trajectory endpoint regression plus `self_adversarial` (the dual-branch
  patch's training in Train SR LoRA).

Notation: x1 the source, x0 the data, u(x, t, s) the network's average velocity, the one-step
sample x̂ = x1 - u(x1, 1, 0), and the interpolant x_t = (1 - t) x0 + t x1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..samplers.flow_map import add_source, denoised_from_velocity, per_sample
from .losses import DISTANCES, mean_square, uniform_times, unpack_batch
from .perceptual import check_window, sampled_perceptual
from .sr_objectives import TrajectoryEndpoint


@dataclass
class PerceptualEndpoint(TrajectoryEndpoint):
    """FlowMapSR's perceptual term on the any-step endpoint regression:

        L = d(x̂0, x0) + w_p LPIPS_vgg(x̂0, x0),     x̂0 = x_t - t u(x_t, t, s)

    on the states of `trajectory_endpoint` (so 1, 2 and 4 steps stay consistent). ST-LPIPS with the
    VGG backbone; benchmarks measure with AlexNet, so the measure is not the loss. The LPIPS term sees
    the last `perceptual_samples` of the batch (the one-step jumps come last) on one random
    `perceptual_crop`² window: at 64² on 4 samples it costs about a quarter of the full batch's.
    """

    distance: str = "l1"
    perceptual_weight: float = 1.0
    perceptual_samples: int = 4
    perceptual_crop: int = 64
    name = "perceptual"
    fidelity_part = TrajectoryEndpoint.name  # the objective without the perceptual network

    def __post_init__(self):
        super().__post_init__()
        if self.perceptual_weight < 0:
            raise ValueError(f"need perceptual_weight >= 0, got {self.perceptual_weight}")
        check_window(self.perceptual_samples, self.perceptual_crop)

    def image_loss(self, denoised, x0, generator):
        fidelity, logs = super().image_loss(denoised, x0, generator)
        perceptual = sampled_perceptual(denoised, x0, generator, self.perceptual_samples, self.perceptual_crop)
        return fidelity + self.perceptual_weight * perceptual, {**logs, "lpips": perceptual.item()}


def total_variation_map(image: torch.Tensor) -> torch.Tensor:
    """|dx| + |dy| per pixel ([B, C, H - 1, W - 1]): where an image changes, and how much."""
    return (image[..., 1:, 1:] - image[..., 1:, :-1]).abs() + (image[..., 1:, 1:] - image[..., :-1, 1:]).abs()


@dataclass
class TVLPIPS(PerceptualEndpoint):
    """FluxSR's TV-LPIPS on the any-step endpoint regression. Its exact form is unpublished; here:

        L = d(x̂0, x0) + w_p (LPIPS_vgg(x̂0, x0) + w_tv || TV(x̂0) - TV(x0) ||_1),
        TV(x) = |d_x x| + |d_y x| per pixel,

    the total-variation map of the output held to the HR image's: LPIPS alone rewards texture where
    there was none (the periodic high-frequency artefacts FluxSR names), a plain TV penalty would
    smooth texture that is there; matching the maps penalises both.
    """

    tv_weight: float = 1.0
    name = "tv_lpips"

    def image_loss(self, denoised, x0, generator):
        loss, logs = super().image_loss(denoised, x0, generator)
        tv = (total_variation_map(denoised) - total_variation_map(x0)).abs().mean()
        return loss + self.perceptual_weight * self.tv_weight * tv, {**logs, "tv": tv.item()}


@dataclass
class TimestepRectification:
    """TEASR's timestep-aware rectification: one jump to 0 from every noise level,

        L = d(x_t - t u(x_t, t, 0), x0),    t ~ U(0, 1],

    so that the one-step map is right wherever on the LR -> HR path the sampler stands (a fraction
    `start_fraction` of the batch at t = 1, the one-step SR jump itself). Its fixed point is the exact
    map of a deterministic coupling (zero loss there).
    """

    start_fraction: float = 0.25
    distance: str = "l1"
    name = "timestep_rectification"

    def __post_init__(self):
        if not 0.0 <= self.start_fraction <= 1.0:
            raise ValueError(f"start_fraction must lie in [0, 1], got {self.start_fraction}")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {sorted(DISTANCES)}, got {self.distance!r}")

    def states(self, x0, x1, generator):
        """(x_t, t): interpolant points, the last `start_fraction` of them at t = 1."""
        n = x0.shape[0]
        n_start = round(n * self.start_fraction)
        t = torch.cat([1 - uniform_times(n - n_start, x0, generator), torch.ones(n_start, device=x0.device)])
        return add_source(x0, x1, per_sample(t, x0)), t

    def __call__(self, net, batch, ema_net=None, generator=None):
        x0, x1, cond = unpack_batch(batch)
        x_t, t = self.states(x0, x1, generator)
        u = net(x_t, t, torch.zeros_like(t), cond)
        loss = DISTANCES[self.distance](denoised_from_velocity(x_t, u, per_sample(t, x_t)), x0).mean()
        return loss, {"rectification": loss.item()}


@dataclass
class SelfAdversarial:
    """TEASR's self-adversarial distillation, TwinFlow-style (Cheng et al. 2025), for an LR source.
    One network is generator, real flow and fake flow; negative times -t name its fake branch:

        x̂     = x1 - u(x1, 1, 0)                                the one-step sample (generator)
        L_fake = || u(x~_t, -t, -t) - (x1 - sg(x̂)) ||^2,         x~_t = (1 - t) sg(x̂) + t x1
        L_real = || u(x_t, t, t) - (x1 - x0) ||^2                 (flow matching, the real branch)
        L_dm   = || u(x1, 1, 0) - sg(u(x1, 1, 0) - D) ||^2,       D = clip(sg(u(x~'_t, -t', -t') - u(x~'_t, t', t')), ±c)
        L      = w_a d(x̂, x0) + w_r L_real + w_f L_fake + w_dm L_dm + w_rect L_rect

    The fake branch learns the velocity of the generator's own (x̂, x1) pairs; where it differs from
    the real branch's, D, the generator is pushed (L_dm's gradient on u(x1, 1, 0) is 2 D) towards
    samples whose flow the real branch already follows: distribution matching as velocity matching,
    with no teacher and no discriminator in memory. When x̂ has the data's distribution the two
    branches agree and D = 0 (the fixed point). `anchor_weight` keeps a d(x̂, x0) fidelity anchor (SR
    must stay faithful to its LR); `rectification_weight` adds `timestep_rectification` on the same
    batch. TwinFlow's own defaults: w_dm = 0.5, c = 1.
    """

    anchor_weight: float = 1.0
    real_weight: float = 1.0
    fake_weight: float = 1.0
    dm_weight: float = 0.5
    rectification_weight: float = 1.0
    clip: float = 1.0
    distance: str = "l1"
    name = "self_adversarial"

    def __post_init__(self):
        weights = {"anchor_weight": self.anchor_weight, "real_weight": self.real_weight,
                   "fake_weight": self.fake_weight, "dm_weight": self.dm_weight,
                   "rectification_weight": self.rectification_weight, "clip": self.clip}
        negative = [name for name, value in weights.items() if value < 0]
        if negative:
            raise ValueError(f"{negative} must be >= 0")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {sorted(DISTANCES)}, got {self.distance!r}")
        self.rectification = TimestepRectification(distance=self.distance)

    def __call__(self, net, batch, ema_net=None, generator=None):
        x0, x1, cond = unpack_batch(batch)
        n = x0.shape[0]
        ones, zeros = torch.ones(n, device=x0.device), torch.zeros(n, device=x0.device)
        t_fake, t_real, t_dm = (uniform_times(n, x0, generator) for _ in range(3))
        x_rect, t_rect = self.rectification.states(x0, x1, generator)
        with torch.no_grad():  # the generator's samples for the fake flow and the velocity difference
            sample = denoised_from_velocity(x1, net(x1, ones, zeros, cond), 1.0)
            x_dm = add_source(sample, x1, per_sample(t_dm, x1))
            both = net(torch.cat([x_dm, x_dm]), torch.cat([-t_dm, t_dm]), torch.cat([-t_dm, t_dm]),
                       None if cond is None else torch.cat([cond, cond]))
            fake_v, real_v = both.chunk(2)
            difference = (fake_v - real_v).float().clamp(-self.clip, self.clip)
        x_fake = add_source(sample, x1, per_sample(t_fake, x1))
        x_real = add_source(x0, x1, per_sample(t_real, x0))
        # one call for every term that takes a gradient
        u = net(torch.cat([x1, x_fake, x_real, x_rect]), torch.cat([ones, -t_fake, t_real, t_rect]),
                torch.cat([zeros, -t_fake, t_real, zeros]), None if cond is None else torch.cat([cond] * 4))
        u_gen, u_fake, u_real, u_rect = u.chunk(4)
        anchor = DISTANCES[self.distance](denoised_from_velocity(x1, u_gen, 1.0), x0).mean()
        fake = mean_square(u_fake, x1 - sample).mean()
        real = mean_square(u_real, x1 - x0).mean()
        dm = mean_square(u_gen, (u_gen - difference).detach()).mean()
        rect = DISTANCES[self.distance](denoised_from_velocity(x_rect, u_rect, per_sample(t_rect, x_rect)), x0).mean()
        loss = (self.anchor_weight * anchor + self.real_weight * real + self.fake_weight * fake
                + self.dm_weight * dm + self.rectification_weight * rect)
        return loss, {"anchor": anchor.item(), "real": real.item(), "fake": fake.item(), "dm": dm.item(),
                      "velocity_gap": difference.abs().mean().item(), "rectification": rect.item()}


@dataclass
class TEASRAnyStep:
    """TEASR's training of an any-step model, as a sum of objectives defined above (no maths of its own):

        L = w_e L_trajectory_endpoint + w_sa L_self_adversarial

    the any-step flow-map objective (`trajectory_endpoint`: every jump t -> s regressed onto the data
    from states on the model's own path, so 1, 2 and 4 steps agree) plus the self-adversarial
    distillation, whose timestep-aware rectification term (`rectification_weight`) makes the one-step
    jump right from every noise level. For networks u(x, t, s) with a real second time input, such as
    a MODEL through the dual-branch patch (bridge/dual_branch.py).
    """

    endpoint_weight: float = 1.0
    self_adversarial_weight: float = 1.0
    rectification_weight: float = 1.0
    dm_weight: float = 0.5
    distance: str = "l1"
    name = "teasr_any_step"
    gradient_calls = 2  # one network call with gradient per summed objective

    def __post_init__(self):
        if min(self.endpoint_weight, self.self_adversarial_weight) < 0:
            raise ValueError("endpoint_weight and self_adversarial_weight must be >= 0")
        self.endpoint = TrajectoryEndpoint(distance=self.distance)
        self.self_adversarial = SelfAdversarial(distance=self.distance, dm_weight=self.dm_weight,
                                                rectification_weight=self.rectification_weight)

    def __call__(self, net, batch, ema_net=None, generator=None):
        endpoint, endpoint_logs = self.endpoint(net, batch, ema_net, generator)
        adversarial, adversarial_logs = self.self_adversarial(net, batch, ema_net, generator)
        loss = self.endpoint_weight * endpoint + self.self_adversarial_weight * adversarial
        return loss, {"endpoint": endpoint.item(), **{f"endpoint_{k}": v for k, v in endpoint_logs.items()},
                      **{f"sa_{k}": v for k, v in adversarial_logs.items()}}
