"""Objectives for SR with a deterministic source (the upsampled LR image at t = 1; see
training/objectives.py for the contract): FlowSR's consistency distillation with HR regularisation,
and every jump regressed onto the HR image from the model's own sampling path."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..samplers.flow_map import add_source, denoised_from_velocity, flow_map, per_sample
from .losses import DISTANCES, batch_split, mean_square, repeat_cond, uniform_times, unpack_batch


@dataclass
class FlowSRConsistency:
    """FlowSR stage 2: consistency distillation along the rectified flow LR -> HR, with HR
    regularisation, between adjacent times t > t' from a fast and a slow scheduler.

    With f(x, t) = x - t u(x, t, 0) (the pseudo-x0 of the full jump) and f' the EMA network's:

        L = || f(x_t, t) - sg(f'(x_t', t')) ||^2
            + hr_weight   (|| f(x_t, t) - x0 ||^2 + || f(x_t', t') - x0 ||^2)
            + flow_weight || u(x_t, t, t) - (x1 - x0) ||^2,
        x_t' = x_t - (t - t') u'(x_t, t, t)   (one Euler step of the EMA network's velocity).

    The flow term keeps the teacher velocity (the diagonal of the same network) trained, so a
    single network is both teacher and one-step student. Times: the scheduler named by
    `student_scheduler` supplies t (fast: k / fast_steps; slow: k / slow_steps), the other one
    t' = its largest point strictly below t. Which side gets which is not published; the
    default "slow" trains the student at every fine time while every target sits on the
    few-step grid, whose points are themselves student times (down to t' = 0, where
    f(x, 0) = x exactly), so the chain of targets is grounded. The HR term regresses onto x0,
    which suits a deterministic source (the LR image); with a noise source set hr_weight = 0,
    or the one-step answer collapses to the data mean.
    """

    fast_steps: int = 4
    slow_steps: int = 1000
    student_scheduler: str = "slow"
    hr_weight: float = 1.0
    flow_weight: float = 1.0
    name = "flowsr_consistency"

    def __post_init__(self):
        if self.student_scheduler not in ("fast", "slow"):
            raise ValueError(f"student_scheduler must be 'fast' or 'slow', got {self.student_scheduler!r}")
        if not 1 <= self.fast_steps <= self.slow_steps:
            raise ValueError(f"need 1 <= fast_steps <= slow_steps, got {self.fast_steps}, {self.slow_steps}")

    def times(self, n: int, like: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Adjacent pairs (t, t'), t' < t, one time from each scheduler."""
        student, other = ((self.slow_steps, self.fast_steps) if self.student_scheduler == "slow"
                          else (self.fast_steps, self.slow_steps))
        t = (torch.floor(uniform_times(n, like, generator) * student) + 1) / student
        # The largest grid point of `other` strictly below t (the small offset absorbs rounding).
        t_prev = (torch.ceil(t * other - 1e-4) - 1).clamp(min=0) / other
        return t, t_prev

    def __call__(self, net, batch, ema_net=None, generator=None):
        x0, x1, cond = unpack_batch(batch)
        teacher = net if ema_net is None else ema_net
        n = x0.shape[0]
        t, t_prev = self.times(n, x0, generator)
        x_t = add_source(x0, x1, per_sample(t, x0))
        with torch.no_grad():
            v_teacher = teacher(x_t, t, t, cond)
            x_prev = flow_map(x_t, v_teacher, t, t_prev)
            u_prev = teacher(x_prev, t_prev, torch.zeros_like(t_prev), cond)
            target = denoised_from_velocity(x_prev, u_prev, per_sample(t_prev, x_prev))

        zeros = torch.zeros_like(t)
        xs, ts, ss = [x_t, x_prev], [t, t_prev], [zeros, zeros]
        if self.flow_weight > 0:
            xs.append(x_t), ts.append(t), ss.append(t)
        u = net(torch.cat(xs), torch.cat(ts), torch.cat(ss), repeat_cond(cond, len(xs)))
        f_t = denoised_from_velocity(x_t, u[:n], per_sample(t, x_t))
        f_prev = denoised_from_velocity(x_prev, u[n:2 * n], per_sample(t_prev, x_prev))
        consistency = mean_square(f_t, target).mean()
        hr = (mean_square(f_t, x0) + mean_square(f_prev, x0)).mean()
        loss = consistency + self.hr_weight * hr
        logs = {"consistency": consistency.item(), "hr": hr.item()}
        if self.flow_weight > 0:
            flow = mean_square(u[2 * n:], x1 - x0).mean()
            loss = loss + self.flow_weight * flow
            logs["flow"] = flow.item()
        return loss, logs


@dataclass
class TrajectoryEndpoint:
    """Every jump regressed onto the data from states on the model's own sampling path, for a
    deterministic source (the upsampled LR image in start mode 'lr').

    For a source that fixes the data, the straight path from any state x_t to x0 has velocity
    (x_t - x0) / t whatever the jump's end s, so every jump t -> s is trained on its endpoint:

        L = d(x_t - t u(x_t, t, s), x0),
        x_t = x1 - (1 - t) sg(u'(x1, 1, t))   (t < 1; at t = 1, x_t = x1),

    with u' the EMA network: x_t is where an any-step sampler stands after its first jump. The
    interpolant (1 - t) x0 + t x1 that flow matching and Shortcut train on carries the data's
    detail scaled by 1 - t, so a network trained there learns to amplify detail that its own
    path never holds (measured on the default model after Shortcut training: 4 steps 0.38 dB
    below 1 step at x4). A fraction `start_fraction` of the batch has t = 1 (the one-step jump), the rest
    t ~ U(0, 1); s ~ U(0, t), so any step count ends on the data. At the optimum the chained
    sampler equals the one-step map: steps trade nothing away, guidance and stochastic
    re-noising are what more steps buy.

    `distance` d is the per-pixel squared error ("l2") or absolute error ("l1"); L1 is the usual
    choice for PSNR-oriented SR networks (EDSR, Lim et al. 2017).
    """

    start_fraction: float = 0.5
    distance: str = "l2"
    name = "trajectory_endpoint"

    def __post_init__(self):
        batch_split(1, self.start_fraction)
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {sorted(DISTANCES)}, got {self.distance!r}")

    def image_loss(self, denoised: torch.Tensor, x0: torch.Tensor, generator) -> tuple[torch.Tensor, dict]:
        """The loss of the jumps' endpoints against the data: (mean over the batch, logs). Subclasses
        add image terms (training/realism_objectives.py)."""
        return DISTANCES[self.distance](denoised, x0).mean(), {}

    def __call__(self, net, batch, ema_net=None, generator=None):
        x0, x1, cond = unpack_batch(batch)
        teacher = net if ema_net is None else ema_net
        n = x0.shape[0]
        n_path = n - batch_split(n, self.start_fraction)
        t = torch.cat([uniform_times(n_path, x0, generator), torch.ones(n - n_path, device=x0.device)])
        s = t * uniform_times(n, x0, generator)
        x_t = x1.clone()
        if n_path:
            with torch.no_grad():
                ones = torch.ones(n_path, device=x0.device)
                path_cond = None if cond is None else cond[:n_path]
                u_first = teacher(x1[:n_path], ones, t[:n_path], path_cond)
                x_t[:n_path] = flow_map(x1[:n_path], u_first, ones, t[:n_path])
        u = net(x_t, t, s, cond)
        denoised = denoised_from_velocity(x_t, u, per_sample(t, x_t))  # the one-step samples last
        loss, extra_logs = self.image_loss(denoised, x0, generator)
        err = DISTANCES[self.distance](denoised.detach(), x0)
        logs = {"endpoint": err.mean().item(),
                "one_step": err[n_path:].mean().item() if n_path < n else 0.0,
                "path": err[:n_path].mean().item() if n_path else 0.0, **extra_logs}
        return loss, logs
