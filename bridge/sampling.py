"""Where ComfyUI's sampling meets the pure samplers: time <-> sigma and the schedule, the start point
from the latent ComfyUI hands the sampler, the family check, the SAMPLER and the flow-map GUIDER.
No maths of its own."""

from __future__ import annotations

import comfy.model_sampling
import comfy.samplers
import torch

from ..samplers.flow_map import FAMILIES, shifted_times
from ..samplers.guidance import scale_at
from ..samplers.sampling import sample_consistency, sample_flow_map
from ..samplers.start import START_MODES, VE_START_MODES, start_point
from .model_info import model_info


def parametrization_of(model_sampling) -> str:
    """'flow' for ComfyUI's rectified-flow (CONST) models, 've' for eps / v models."""
    return "flow" if isinstance(model_sampling, comfy.model_sampling.CONST) else "ve"


def sigma_of_time(model_sampling, t: float) -> float:
    """The model's sigma at flow time t in [0, 1] (t = 1 source, t = 0 data)."""
    if parametrization_of(model_sampling) == "flow" or t <= 0.0:
        return float(t)
    if t >= 1.0:
        return float(model_sampling.sigma_max)
    return float(model_sampling.percent_to_sigma(1.0 - t))


def check_family(model_patcher, family: str | None) -> str:
    """The family to sample `model_patcher` with (None: the model's own); a clear error when the
    MODEL cannot take the target time that `family` needs."""
    accepted = model_info(model_patcher).families
    if family is None:
        return accepted[0]
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if family == "dual_branch" and family not in accepted:
        raise ValueError(
            "OneStep SR: family 'dual_branch' needs a MODEL with the dual-branch patch (a second time embedder "
            "and the LR latent as condition tokens), and this MODEL has none. Connect the MODEL through "
            "'OneStep SR Dual-Branch Patch' (FLUX.1, SD3, Qwen-Image, Lumina 2 / Z-Image), or set the sampler's family to 'auto'.")
    if family not in accepted:
        raise ValueError(
            f"OneStep SR: this MODEL takes family {' or '.join(repr(f) for f in accepted)}, not '{family}'. "
            f"Set family to 'auto'. Families other than 'plain' need a MODEL with a second time input: "
            f"load a flow-map model (e.g. 'Load OneStep SR Model') or an SR adapter that adds one.")
    return family


def check_start_mode(start_mode: str, parametrization: str) -> None:
    if start_mode not in START_MODES:
        raise ValueError(f"start_mode must be one of {START_MODES}, got {start_mode!r}")
    if parametrization == "ve" and start_mode not in VE_START_MODES:
        raise ValueError(
            f"OneStep SR: start mode '{start_mode}' needs a flow-matching MODEL (FLUX, SD3, ...), but "
            f"this is an eps/v model. Use {' or '.join(VE_START_MODES)}, or patch the model to flow "
            f"sampling with ComfyUI's ModelSamplingSD3 node if it was trained as a flow.")


def family_choice(choice: str) -> str | None:
    """The family widget's value for `check_family`: 'auto' means the model's own."""
    return None if choice == "auto" else choice


# On a text-free model's negative CONDITIONING: that branch sees the softened state instead.
SOFTENED_KEY = "onestep_sr_softened"


def empty_conditioning(negative: bool = False) -> list:
    """CONDITIONING for models that take no text (the OneStep SR default model): the positive
    is empty; the negative asks for the model's answer on a blurrier input (models/pipeline.py)."""
    return [[torch.zeros(1, 1, 1), {SOFTENED_KEY: True} if negative else {}]]


def ksampler(sample_fn, start_mode: str, bridge_scale: float = 1.0, family: str | None = None, **options):
    """A ComfyUI SAMPLER running `sample_fn` from the start point of `start_mode`.

    ComfyUI builds x = noise_scaling(sigma_0, noise, latent) and leaves the noise and the
    (processed) latent on the k-diffusion model it passes; for flow models the start point is
    rebuilt from those two, so every start mode works with stock noise and latent nodes.
    family None samples with the model's own family.
    """
    check_start_mode(start_mode, "flow")  # a bad name fails when the SAMPLER is made, not mid-run

    def sampler_function(model, x, sigmas, extra_args=None, callback=None, disable=None):
        guider = model.inner_model
        model_sampling = guider.inner_model.model_sampling
        parametrization = parametrization_of(model_sampling)
        check_start_mode(start_mode, parametrization)
        if parametrization == "flow":
            lr_latent = model.latent_image if model.latent_image is not None else torch.zeros_like(x)
            x = start_point(start_mode, lr_latent, model.noise, float(sigmas[0]), bridge_scale,
                            model_info(guider.model_patcher).source_noise).to(x)
        chosen = check_family(guider.model_patcher, family)
        condition = None
        if chosen == "dual_branch":  # the LR latent rides with every jump as the condition tokens
            if model.latent_image is None:
                raise ValueError("OneStep SR: family 'dual_branch' takes the LR latent from the sampler's "
                                 "latent_image: connect OneStep SR Conditioning's LATENT to the sampler")
            condition = model.latent_image
        return sample_fn(model, x, sigmas, extra_args, callback, disable, family=chosen,
                         parametrization=parametrization, condition=condition, **options)

    return comfy.samplers.KSAMPLER(sampler_function)


def flow_map_sampler(start_mode: str, bridge_scale: float = 1.0, family: str | None = None, gamma: float = 0.0):
    """The SAMPLER of the any-step flow-map chain (samplers.sampling.sample_flow_map)."""
    return ksampler(sample_flow_map, start_mode, bridge_scale, family=family, gamma=gamma)


def consistency_sampler(start_mode: str, bridge_scale: float = 1.0):
    """The SAMPLER of consistency sampling (samplers.sampling.sample_consistency)."""
    return ksampler(sample_consistency, start_mode, bridge_scale)


def flow_map_sigmas(model_patcher, steps: int, t_start: float, shift: float) -> torch.Tensor:
    """The schedule in the MODEL's own sigmas: steps + 1 times from t_start to 0."""
    model_sampling = model_patcher.get_model_object("model_sampling")
    times = shifted_times(steps, t_start, shift)
    return torch.tensor([sigma_of_time(model_sampling, float(t)) for t in times])


class FlowMapGuider(comfy.samplers.CFGGuider):
    """Positive/negative guidance on a flow map (samplers/guidance.py), on for t in [t_lo, t_hi] only.

    ComfyUI's CFG mixes pseudo-x0s as negative + w (positive - negative), batching both branches;
    a jump is affine in the pseudo-x0, so this equals the flow-map guidance u_w. Where w = 1
    (no guidance, or outside the interval) ComfyUI runs the positive branch alone.
    """

    def __init__(self, model_patcher, t_lo: float = 0.0, t_hi: float = 1.0):
        super().__init__(model_patcher)
        scale_at(0.5, 1.0, t_lo, t_hi)  # validates the interval up front
        model_sampling = model_patcher.get_model_object("model_sampling")
        self.sigma_lo = sigma_of_time(model_sampling, t_lo)
        self.sigma_hi = sigma_of_time(model_sampling, t_hi)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        scale = scale_at(float(timestep.max()), self.cfg, self.sigma_lo, self.sigma_hi)
        return comfy.samplers.sampling_function(self.inner_model, x, timestep, self.conds.get("negative"),
                                                self.conds.get("positive"), scale,
                                                model_options=model_options, seed=seed)


def flow_map_guider(model, positive, negative, scale: float, t_lo: float = 0.0, t_hi: float = 1.0):
    """A FlowMapGuider at `scale`; negative may be None where scale is 1."""
    guider = FlowMapGuider(model, t_lo, t_hi)
    guider.set_cfg(scale)
    if negative is not None:
        guider.set_conds(positive, negative)
    elif scale != 1.0:
        raise ValueError("OneStep SR guidance: a scale other than 1 needs a 'negative' CONDITIONING "
                         "(connect one, e.g. the negative output of 'OneStep SR Prompts')")
    else:
        guider.inner_set_conds({"positive": positive})
    return guider
