"""Toy problems with known answers for the objectives: a linear-Gaussian flow with an exact flow
map, a 2-D Gaussian mixture, a small MLP flow-map network, any-step sampling through the
package's own sampler, and the sliced Wasserstein distance."""

from __future__ import annotations

import math

import torch

from ..samplers.flow_map import per_sample, shifted_times
from ..samplers.sampling import flow_map_model, sample_flow_map


class LinearGaussian:
    """Data N(mu, sigma^2) per coordinate, standard-noise source (a known answer: its exact flow map is affine).

    The marginal at t is N(m_t, sigma_t^2), m_t = (1 - t) mu, sigma_t^2 = (1 - t)^2 sigma^2 + t^2,
    and the exact flow map is affine: X(x, t -> s) = m_s + (sigma_s / sigma_t) (x - m_t).
    """

    def __init__(self, mu: float = 1.5, sigma: float = 0.5):
        self.mu, self.sigma = mu, sigma

    def marginal(self, t):
        return (1 - t) * self.mu, torch.sqrt((1 - t) ** 2 * self.sigma ** 2 + t ** 2)

    def flow_map(self, x, t, s):
        m_t, sd_t = self.marginal(t)
        m_s, sd_s = self.marginal(s)
        return m_s + (sd_s / sd_t) * (x - m_t)

    def velocity(self, x, t):
        """v(x, t) = d/dt of the trajectory through x: m'_t + (sigma'_t / sigma_t)(x - m_t)."""
        m_t, sd_t = self.marginal(t)
        dsd_t = ((t - 1) * self.sigma ** 2 + t) / sd_t
        return -self.mu + (dsd_t / sd_t) * (x - m_t)

    def average_velocity(self, x, t, s):
        """u(x, t, s) = (x - X(x, t -> s)) / (t - s), and v(x, t) on the diagonal.

        t and s broadcast against x. The off-diagonal branch divides by a safe denominator so
        that gradients and JVPs stay finite on the diagonal."""
        gap = t - s
        diagonal = gap.abs() < 1e-6
        safe_gap = torch.where(diagonal, torch.ones_like(gap), gap)
        return torch.where(diagonal, self.velocity(x, t), (x - self.flow_map(x, t, s)) / safe_gap)

    def sample(self, n: int, dim: int, generator=None) -> dict:
        x0 = self.mu + self.sigma * torch.randn(n, dim, generator=generator)
        return {"x0": x0, "x1": torch.randn(n, dim, generator=generator)}


class StraightCoupling:
    """A deterministic source, x1 = a * x0 + c (an "LR" made from the data), x0 ~ N(mu, sigma^2).

    Every path x_t = (1 - t) x0 + t x1 is then an ODE trajectory, so the exact average velocity
    is the constant u(x, t, s) = x1 - x0 = (a - 1) x0 + c with x0 = (x - t c) / (1 - t + t a).
    """

    def __init__(self, a: float = 0.5, c: float = 0.3, mu: float = 1.0, sigma: float = 0.5):
        self.a, self.c, self.mu, self.sigma = a, c, mu, sigma

    def average_velocity(self, x, t, s):
        x0 = (x - t * self.c) / (1 - t + t * self.a)
        return (self.a - 1) * x0 + self.c + 0 * s

    def sample(self, n: int, dim: int, generator=None) -> dict:
        x0 = self.mu + self.sigma * torch.randn(n, dim, generator=generator)
        return {"x0": x0, "x1": self.a * x0 + self.c}


class ExactNet(torch.nn.Module):
    """net(x, t, s, cond) = (1 + scale) u_exact(x, t, s) + bend (t - s), for a toy problem with an
    exact `average_velocity` (LinearGaussian, StraightCoupling).

    scale and bend are parameters, zero for the exact map. bend leaves the diagonal (flow
    matching) exact and breaks only the map, so it is visible to every flow-map objective."""

    def __init__(self, problem, scale: float = 0.0, bend: float = 0.0):
        super().__init__()
        self.problem = problem
        self.scale = torch.nn.Parameter(torch.tensor(float(scale)))
        self.bend = torch.nn.Parameter(torch.tensor(float(bend)))

    def forward(self, x, t, s, cond=None):
        t, s = per_sample(t, x), per_sample(s, x)
        return (1 + self.scale) * self.problem.average_velocity(x, t, s) + self.bend * (t - s)


def gaussian_mixture(n: int, generator=None, modes: int = 8, radius: float = 2.0,
                     std: float = 0.15) -> torch.Tensor:
    """n points from `modes` equal Gaussians on a circle (the classic 2-D toy target)."""
    k = torch.randint(0, modes, (n,), generator=generator)
    angle = 2 * math.pi * k.float() / modes
    centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centres + std * torch.randn(n, 2, generator=generator)


def mixture_batches(batch_size: int, **mixture):
    """batches(generator) -> {"x0": mixture samples, "x1": standard noise}, for the Trainer."""
    def batches(generator):
        # Draw on the CPU so the data do not depend on the device the trainer runs on.
        cpu = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=generator,
                                                              device=generator.device)))
        return {"x0": gaussian_mixture(batch_size, cpu, **mixture), "x1": torch.randn(batch_size, 2, generator=cpu)}
    return batches


class ToyFlowMapNet(torch.nn.Module):
    """A small MLP u(x, t, s) for 2-D toys: x with Fourier features of t and s (two_time family)."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, frequencies: int = 8):
        super().__init__()
        self.register_buffer("freqs", math.pi * torch.arange(1, frequencies + 1).float(), persistent=False)
        width_in = dim + 2 * 2 * frequencies + 2
        layers = []
        for i in range(depth):
            layers += [torch.nn.Linear(width_in if i == 0 else hidden, hidden), torch.nn.SiLU()]
        self.mlp = torch.nn.Sequential(*layers, torch.nn.Linear(hidden, dim))

    def _features(self, time):
        angles = time[:, None] * self.freqs
        return [angles.sin(), angles.cos()]

    def forward(self, x, t, s, cond=None):
        t, s = t.to(x.dtype), s.to(x.dtype)
        return self.mlp(torch.cat([x, t[:, None], (t - s)[:, None], *self._features(t), *self._features(s)], 1))


@torch.no_grad()
def sample(net, source: torch.Tensor, steps: int, family: str = "two_time", cond=None,
           gamma: float = 0.0) -> torch.Tensor:
    """`steps` uniform jumps from t = 1 (source) to 0 with the package's any-step sampler
    (gamma = 1: consistency sampling, every jump to 0 then re-noised; see sample_flow_map)."""
    return sample_flow_map(flow_map_model(net, family, cond), source, shifted_times(steps), disable=True,
                           family=family, gamma=gamma, extra_args={"seed": 0})


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 512, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size point clouds [N, D]."""
    if a.shape != b.shape:
        raise ValueError(f"point clouds must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(a.shape[1], projections, generator=generator, dtype=torch.float64)
    directions /= directions.norm(dim=0, keepdim=True)
    pa, _ = (a.double().cpu() @ directions).sort(dim=0)
    pb, _ = (b.double().cpu() @ directions).sort(dim=0)
    return float((pa - pb).square().mean().sqrt())

