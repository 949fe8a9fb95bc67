"""Any-step flow-map and consistency samplers in the k-diffusion convention.

Each function takes (model, x, sigmas, extra_args, callback, disable) like k-diffusion's
``sampling.py``, where ``model(x, sigma, **extra_args)`` returns the pseudo-x0 (denoised), so
it drops into ComfyUI's ``comfy.samplers.KSAMPLER`` as it is. The target time of every jump
travels to the model in ``extra_args["model_options"]["transformer_options"][TARGET_KEY]``:
a flow-map model reads it there, a plain flow-matching model ignores it and takes an Euler
step instead.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import trange

from .flow_map import FAMILIES, add_source, denoised_from_velocity, jump, per_sample, source_estimate

TARGET_KEY = "onestep_sr_target"
# The dual_branch family's condition: the LR latent (in the model's latent space), beside the target.
CONDITION_KEY = "onestep_sr_condition"


def with_target(extra_args: dict, sigma_to: float, family: str, condition: torch.Tensor | None = None) -> dict:
    """A copy of extra_args whose transformer_options ask the model for the jump to sigma_to (and, for the
    dual_branch family, hand it the LR latent `condition`)."""
    model_options = dict(extra_args.get("model_options", {}))
    transformer_options = dict(model_options.get("transformer_options", {}))
    transformer_options[TARGET_KEY] = {"sigma_to": float(sigma_to), "family": family}
    if condition is not None:
        transformer_options[CONDITION_KEY] = condition
    model_options["transformer_options"] = transformer_options
    return {**extra_args, "model_options": model_options}


def jump_target(transformer_options: dict | None, t: torch.Tensor) -> torch.Tensor:
    """The target time s of the jump the sampler asked for, shaped like t; s = t (the instantaneous
    velocity) when no OneStep SR sampler asked, so stock ComfyUI samplers integrate the flow."""
    target = (transformer_options or {}).get(TARGET_KEY)
    if target is None:
        return t
    sigma_to = target["sigma_to"]
    if torch.is_tensor(sigma_to):  # per-sample targets (training); repeated over batched CFG branches
        sigma_to = sigma_to.reshape(-1).to(t)
        return sigma_to.repeat(t.numel() // sigma_to.numel()).reshape(t.shape)
    return torch.full_like(t, sigma_to)


def flow_map_denoiser(net, family: str):
    """denoise(x, sigma, cond=None, model_options=None) -> pseudo-x0 around a flow-map network
    net(x, t, s, cond) -> u, the project's network contract.

    family "plain" evaluates the diagonal u(x, t, t) (a flow-matching net: the jump is then an
    Euler step); every other family reads the jump's target time (`jump_target`).
    """
    def denoise(x, sigma, cond=None, model_options=None, **_):
        t = sigma.reshape(-1).expand(x.shape[0]).to(x.dtype)
        s = t if family == "plain" else jump_target((model_options or {}).get("transformer_options"), t)
        return denoised_from_velocity(x, net(x, t, s, cond), per_sample(t, x))

    return denoise


def flow_map_model(net, family: str, cond=None):
    """The k-diffusion model ``model(x, sigma, **extra_args) -> pseudo-x0`` of a flow-map network
    net(x, t, s, cond) -> u with a fixed condition `cond` (see `flow_map_denoiser`)."""
    denoise = flow_map_denoiser(net, family)
    return lambda x, sigma, **extra_args: denoise(x, sigma, cond, **extra_args)


def default_noise_sampler(x: torch.Tensor, seed):
    """noise_sampler(sigma, sigma_next) -> fresh standard noise shaped like x, drawn on the CPU from a
    generator seeded once with `seed` + 1 (the same draws on every device; wrapping past 2^64 - 1, the
    largest seed ComfyUI's widgets give, which torch's generator takes)."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(0 if seed is None else (int(seed) + 1) % 2 ** 64)
    return lambda sigma, sigma_next: torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x)


@torch.no_grad()
def sample_flow_map(model, x, sigmas, extra_args=None, callback=None, disable=None, *,
                    family: str = "plain", gamma: float = 0.0, parametrization: str = "flow",
                    noise_sampler=None, condition=None):
    """Chain of flow-map jumps over `sigmas` (1..N steps, one network evaluation each).

    gamma = 0: deterministic, x <- X(x, t -> s) with the model asked for the jump t -> s.
    gamma > 0: stochastic; the model jumps to 0, then the sample is re-noised to s with a
    source that keeps a fraction 1 - gamma of the variance of the source it came from and
    takes gamma fresh: src = sqrt(1 - gamma) * src_hat + sqrt(gamma) * fresh. gamma = 1 is
    consistency-model sampling and keeps the marginals exact for an exact map; in between it
    is the usual any-step heuristic (src_hat is tied to the sample, not independent of it).
    `parametrization` says how data and source mix ("flow" for ComfyUI's CONST models, "ve"
    for its eps / v models); `noise_sampler(sigma, sigma_next)` draws the fresh source, as in
    k-diffusion (default: `default_noise_sampler` seeded from extra_args["seed"]). `condition`: the LR
    latent the dual_branch family hands the model with every jump (`with_target`).
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    if len(sigmas) < 2:
        raise ValueError("sigmas must hold at least two times (one step)")
    extra_args = {} if extra_args is None else extra_args
    if gamma > 0 and noise_sampler is None:
        noise_sampler = default_noise_sampler(x, extra_args.get("seed"))
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        t, s = sigmas[i], sigmas[i + 1]
        target = s if gamma == 0 else 0.0
        denoised = model(x, t * s_in, **with_target(extra_args, target, family, condition))
        if callback is not None:
            callback({"x": x, "i": i, "sigma": t, "sigma_hat": t, "denoised": denoised})
        if s == 0:
            x = denoised
        elif gamma == 0:
            x = jump(x, denoised, t, s)
        else:
            src = source_estimate(x, denoised, t, parametrization)
            src = math.sqrt(1 - gamma) * src + math.sqrt(gamma) * noise_sampler(t, s)
            x = add_source(denoised, src, s, parametrization)
    return x


def sample_consistency(model, x, sigmas, extra_args=None, callback=None, disable=None, *,
                       family: str = "plain", parametrization: str = "flow", noise_sampler=None, condition=None):
    """Consistency sampling: one step jumps straight to 0; more steps re-noise with fresh
    noise in between (the flow-map sampler with gamma = 1: every jump targets 0)."""
    return sample_flow_map(model, x, sigmas, extra_args, callback, disable, family=family,
                           gamma=1.0, parametrization=parametrization, noise_sampler=noise_sampler,
                           condition=condition)
