"""Known-answer tests of the pure sampler core on the linear-Gaussian toy.

Data x_hr ~ N(mu, sigma^2) per coordinate, source standard noise. The marginal at t is
N(m_t, s_t^2), m_t = (1 - t) mu, s_t^2 = (1 - t)^2 sigma^2 + t^2, and the exact flow map is
affine: X(x, t -> s) = m_s + (s_s / s_t) (x - m_t).
"""

import math

import pytest
import torch

from onestep_sr.samplers.flow_map import (add_source, average_velocity, denoised_from_velocity, jump, shifted_times,
                                          source_estimate, time_inputs)
from onestep_sr.samplers.guidance import guided_denoiser, mix, scale_at
from onestep_sr.samplers.sampling import (flow_map_denoiser, jump_target, sample_consistency, sample_flow_map,
                                          with_target)
from onestep_sr.samplers.start import START_MODES, start_point, start_uses_noise

MU, SIGMA = 0.7, 0.4


def marginal(t, mu=MU, sigma=SIGMA):
    return (1 - t) * mu, math.sqrt((1 - t) ** 2 * sigma ** 2 + t ** 2)


def exact_map(x, t, s, mu=MU, sigma=SIGMA):
    m_t, s_t = marginal(t, mu, sigma)
    m_s, s_s = marginal(s, mu, sigma)
    return m_s + (s_s / s_t) * (x - m_t)


class ExactFlowMap:
    """A k-diffusion model returning the pseudo-x0 of the exact jump the sampler asks for."""

    def __init__(self, mu=MU, sigma=SIGMA):
        self.mu, self.sigma, self.calls = mu, sigma, 0

    def __call__(self, x, sigma, model_options=None, seed=None):
        self.calls += 1
        t = float(sigma[0])
        s = float(jump_target(model_options["transformer_options"], sigma)[0])
        u = (x - exact_map(x, t, s, self.mu, self.sigma)) / (t - s)
        return denoised_from_velocity(x, u, t)


class ExactVelocity:
    """A plain flow-matching model: the exact marginal velocity, blind to the target time."""

    def __call__(self, x, sigma, model_options=None, seed=None):
        t = float(sigma[0])
        m_t, s_t = marginal(t)
        # E[x_hr | x_t] for jointly Gaussian (x_hr, x_t); v = (x - E[x_hr | x_t]) / t
        x0 = MU + (1 - t) * SIGMA ** 2 / s_t ** 2 * (x - m_t)
        return x0


@pytest.fixture
def source():
    return torch.randn(4096, 2, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_exact_flow_map_is_step_count_invariant_and_matches_closed_form(source, steps):
    sigmas = shifted_times(steps)
    out = sample_flow_map(ExactFlowMap(), source, sigmas, disable=True)
    closed = exact_map(source, 1.0, 0.0)
    assert torch.allclose(out, closed, atol=1e-5)
    assert torch.allclose(out, MU + SIGMA * source, atol=1e-5)


def test_shifted_schedule_gives_the_same_answer_on_an_exact_map(source):
    a = sample_flow_map(ExactFlowMap(), source, shifted_times(3, shift=3.0), disable=True)
    b = sample_flow_map(ExactFlowMap(), source, shifted_times(1), disable=True)
    assert torch.allclose(a, b, atol=1e-5)


def test_one_network_evaluation_per_step(source):
    model = ExactFlowMap()
    sample_flow_map(model, source, shifted_times(5), disable=True)
    assert model.calls == 5


def test_plain_flow_one_euler_step_lands_on_the_data_mean(source):
    out = sample_flow_map(ExactVelocity(), source, shifted_times(1), disable=True)
    assert torch.allclose(out, torch.full_like(out, MU), atol=1e-6)
    many = sample_flow_map(ExactVelocity(), source, shifted_times(200), disable=True)
    assert abs(float(many.std()) - SIGMA) < 0.01  # many Euler steps recover the spread


def test_consistency_sampling_keeps_the_right_distribution(source):
    out = sample_consistency(ExactFlowMap(), source, shifted_times(4), extra_args={"seed": 3},
                             disable=True)
    assert abs(float(out.mean()) - MU) < 0.02
    assert abs(float(out.std()) - SIGMA) < 0.02
    one = sample_consistency(ExactFlowMap(), source, shifted_times(1), disable=True)
    assert torch.allclose(one, MU + SIGMA * source, atol=1e-5)


def test_stochastic_variant_is_deterministic_at_gamma_zero_and_seeded_otherwise(source):
    det = sample_flow_map(ExactFlowMap(), source, shifted_times(4), gamma=0.0, disable=True)
    assert torch.allclose(det, MU + SIGMA * source, atol=1e-5)
    runs = [sample_flow_map(ExactFlowMap(), source, shifted_times(4), extra_args={"seed": seed},
                            gamma=0.5, disable=True) for seed in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2], atol=1e-2)
    assert not torch.allclose(runs[0], det, atol=1e-2)
    assert abs(float(runs[0].mean()) - MU) < 0.02


def test_jump_equals_flow_map_form():
    x, u = torch.randn(3, 5), torch.randn(3, 5)
    t, s = 0.8, 0.3
    assert torch.allclose(jump(x, denoised_from_velocity(x, u, t), t, s), x - (t - s) * u, atol=1e-6)
    assert torch.allclose(average_velocity(x, denoised_from_velocity(x, u, t), t), u, atol=1e-6)


@pytest.mark.parametrize("parametrization", ["flow", "ve"])
def test_source_estimate_inverts_add_source(parametrization):
    x0, src = torch.randn(2, 3), torch.randn(2, 3)
    x = add_source(x0, src, 0.4, parametrization)
    assert torch.allclose(source_estimate(x, x0, 0.4, parametrization), src, atol=1e-6)


def test_time_inputs_per_family():
    t, s = torch.tensor([0.75]), torch.tensor([0.25])
    assert time_inputs("plain", t, s).keys() == {"t"}
    assert torch.allclose(time_inputs("shortcut", t, s)["d"], torch.tensor([0.5]))
    assert time_inputs("two_time", t, s)["s"] is s
    dual = time_inputs("dual_branch", t, s)  # t and s on separate embedders (bridge/dual_branch.py)
    assert dual.keys() == {"t", "s"} and dual["t"] is t and dual["s"] is s
    with pytest.raises(ValueError, match="family"):
        time_inputs("eulerian", t, s)


def test_start_modes_build_the_right_points():
    lr, noise = torch.full((1, 4), 2.0), torch.full((1, 4), -1.0)
    assert torch.equal(start_point("lr", lr, noise, 1.0), lr)
    assert torch.equal(start_point("lr_at_T", lr, noise, 0.6), lr)
    assert torch.allclose(start_point("lr", lr, noise, 1.0, source_noise=0.5), torch.full((1, 4), 1.5))
    assert torch.equal(start_point("noise", lr, noise, 1.0), noise)
    assert torch.allclose(start_point("noised_lr", lr, noise, 0.25), torch.full((1, 4), 1.25))
    bridge = start_point("bridge", lr, noise, 0.5, bridge_scale=2.0)
    assert torch.allclose(bridge, torch.full((1, 4), 2.0 - 2.0 * 0.5))
    assert torch.equal(start_point("bridge", lr, noise, 1.0), lr)  # no bridge noise at the ends
    assert set(START_MODES) == {"lr", "lr_at_T", "noise", "noised_lr", "bridge"}


@pytest.mark.parametrize("mode", START_MODES)
@pytest.mark.parametrize("source_noise", [0.0, 0.3])
def test_start_uses_noise_exactly_when_the_start_point_reads_it(mode, source_noise):
    lr, t = torch.full((1, 4), 2.0), 1.0 if mode == "lr" else 0.5
    points = [start_point(mode, lr, torch.full((1, 4), value), t, source_noise=source_noise) for value in (-1.0, 1.0)]
    assert start_uses_noise(mode, source_noise) == (not torch.equal(*points))


def test_start_mode_errors_name_the_fix():
    lr = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="lr_at_T"):
        start_point("lr", lr, lr, 0.5)
    with pytest.raises(ValueError, match="start mode must be one of"):
        start_point("bogus", lr, lr, 1.0)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        shifted_times(0)


class CountingDenoiser:
    """denoise(x, sigma, cond) whose answer is the condition: tells the branches apart."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, sigma, cond, **extra_args):
        self.calls += 1
        return cond.expand_as(x).clone()


def test_guidance_scale_one_is_the_positive_branch_in_one_call():
    pos, neg = torch.full((2, 3), 1.0), torch.full((2, 3), -3.0)
    denoise = CountingDenoiser()
    model = guided_denoiser(denoise, pos, neg, scale=1.0)
    x = torch.zeros(2, 3)
    sample_flow_map(model, x, shifted_times(3), disable=True)
    assert denoise.calls == 3
    assert torch.equal(model(x, torch.ones(2)), pos)


def test_guidance_batches_both_branches_and_mixes():
    pos, neg = torch.full((2, 3), 1.0), torch.full((2, 3), -3.0)
    denoise = CountingDenoiser()
    out = guided_denoiser(denoise, pos, neg, scale=0.0)(torch.zeros(2, 3), torch.ones(2))
    assert denoise.calls == 1 and torch.equal(out, neg)  # one batched forward; w = 0 is negative
    out = guided_denoiser(denoise, pos, neg, scale=2.5)(torch.zeros(2, 3), torch.ones(2))
    assert torch.allclose(out, neg + 2.5 * (pos - neg))


def test_guidance_interval_switches_guidance_off_outside():
    assert scale_at(0.9, 3.0, 0.2, 0.8) == 1.0
    assert scale_at(0.5, 3.0, 0.2, 0.8) == 3.0
    denoise = CountingDenoiser()
    pos, neg = torch.ones(1, 1), torch.zeros(1, 1)
    out = guided_denoiser(denoise, pos, neg, scale=4.0, t_lo=0.0, t_hi=0.5)(torch.zeros(1, 1),
                                                                            torch.ones(1))
    assert torch.equal(out, pos)
    with pytest.raises(ValueError, match="empty"):
        scale_at(0.5, 2.0, 0.8, 0.2)


def test_guidance_on_velocity_equals_guidance_on_pseudo_x0():
    x, up, un = torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4)
    t, s, w = 0.9, 0.4, 3.0
    via_u = x - (t - s) * mix(up, un, w)
    via_x0 = jump(x, mix(denoised_from_velocity(x, up, t), denoised_from_velocity(x, un, t), w), t, s)
    assert torch.allclose(via_u, via_x0, atol=1e-5)


def test_the_stochastic_sampler_calls_a_k_diffusion_noise_sampler_with_each_jump(source):
    """noise_sampler(sigma, sigma_next) as k-diffusion and ComfyUI call it: with a source that is always
    zero and gamma = 1, every re-noised point is the exact map's x0 scaled by (1 - s)."""
    calls = []

    def zero_noise(sigma, sigma_next):
        calls.append((float(sigma), float(sigma_next)))
        return torch.zeros_like(source)

    times = shifted_times(3)
    out = sample_flow_map(ExactFlowMap(), source, times, gamma=1.0, noise_sampler=zero_noise, disable=True)
    assert calls == [(float(times[0]), float(times[1])), (float(times[1]), float(times[2]))]
    # x0 = MU + SIGMA * source at the first jump; re-noised with a zero source to (1 - s) x0; the exact map
    # then returns the data point of that state: x0' = (x - m_s) / sd_s * SIGMA + MU
    x = MU + SIGMA * source
    for s in times[1:-1].tolist():
        m_s, sd_s = marginal(s)
        x = MU + SIGMA * ((1 - s) * x - m_s) / sd_s
    assert torch.allclose(out, x, atol=1e-5)


def test_a_missing_jump_target_means_the_instantaneous_velocity():
    """One reader of the target-time protocol: a stock sampler asks for no target, and a flow-map
    network is then evaluated on its diagonal s = t."""
    seen = []

    def net(x, t, s, cond):
        seen.append(s.clone())
        return torch.zeros_like(x)

    t = torch.tensor([0.75, 0.75])
    assert torch.equal(jump_target({}, t), t) and torch.equal(jump_target(None, t), t)
    flow_map_denoiser(net, "two_time")(torch.zeros(2, 3), t)
    flow_map_denoiser(net, "two_time")(torch.zeros(2, 3), t, model_options=with_target({}, 0.25, "two_time")["model_options"])
    assert torch.equal(seen[0], t) and torch.equal(seen[1], torch.full((2,), 0.25))


def test_the_noise_of_the_largest_seed_wraps_to_seed_zero_plus_one():
    """ComfyUI's seed widgets reach 2^64 - 1; the re-noising generator is seeded with seed + 1, which
    wraps to 0 there (torch takes seeds in [0, 2^64 - 1]): known answer, the draws of seed 0."""
    from onestep_sr.samplers.sampling import default_noise_sampler

    x = torch.zeros(2, 3, 4, 4)
    draws = default_noise_sampler(x, 2 ** 64 - 1)(1.0, 0.5)
    assert torch.equal(draws, torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(default_noise_sampler(x, 4)(1.0, 0.5),
                       torch.randn(x.shape, generator=torch.Generator().manual_seed(5)))


def test_per_sample_targets_and_the_dual_branch_condition_ride_in_transformer_options():
    """Training asks for one target per sample (a [B] tensor), repeated over batched CFG branches; the
    dual_branch family also hands the model its LR latent (CONDITION_KEY)."""
    from onestep_sr.samplers.sampling import CONDITION_KEY, TARGET_KEY

    t = torch.full((4,), 0.9)
    options = {TARGET_KEY: {"sigma_to": torch.tensor([0.1, 0.2]), "family": "dual_branch"}}
    assert torch.equal(jump_target(options, t), torch.tensor([0.1, 0.2, 0.1, 0.2]))
    lr = torch.ones(1, 2)
    extra = with_target({}, 0.5, "dual_branch", lr)["model_options"]["transformer_options"]
    assert extra[CONDITION_KEY] is lr and extra[TARGET_KEY] == {"sigma_to": 0.5, "family": "dual_branch"}
    assert CONDITION_KEY not in with_target({}, 0.5, "two_time")["model_options"]["transformer_options"]
