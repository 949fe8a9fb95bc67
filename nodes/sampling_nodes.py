"""SIGMAS, SAMPLER and GUIDER nodes: thin wrappers around samplers/ for SamplerCustomAdvanced."""

from __future__ import annotations

import comfy.samplers
import torch

from ..samplers import sample_consistency, sample_flow_map, scale_at, shifted_times
from .comfy_glue import family_choice, ksampler, sigma_of_time
from .inputs import BRIDGE_SCALE, FAMILY, GAMMA, GUIDANCE, SHIFT, START_MODE, STEPS, T_START

CATEGORY = "OneStep SR/sampling"

def flow_map_sigmas(model_patcher, steps: int, t_start: float, shift: float) -> torch.Tensor:
    """The schedule in the MODEL's own sigmas: steps + 1 times from t_start to 0."""
    model_sampling = model_patcher.get_model_object("model_sampling")
    times = shifted_times(steps, t_start, shift)
    return torch.tensor([sigma_of_time(model_sampling, float(t)) for t in times])


class FlowMapGuider(comfy.samplers.CFGGuider):
    """Positive/negative guidance on a flow map (DESIGN §3), on for t in [t_lo, t_hi] only.

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


class OneStepSRSchedule:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model the schedule is for (its sigmas are used)."}),
            "steps": STEPS,
            "t_start": T_START,
            "shift": SHIFT,
        }}

    RETURN_TYPES = ("SIGMAS",)
    RETURN_NAMES = ("sigmas",)
    FUNCTION = "schedule"
    CATEGORY = CATEGORY
    DESCRIPTION = "The any-step flow-map schedule: steps + 1 times from t_start down to 0."

    def schedule(self, model, steps, t_start, shift):
        return (flow_map_sigmas(model, steps, t_start, shift),)


class OneStepSRFlowMapSampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "family": FAMILY,
            "start_mode": START_MODE,
            "gamma": GAMMA,
            "bridge_scale": BRIDGE_SCALE,
        }}

    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("sampler",)
    FUNCTION = "get_sampler"
    CATEGORY = CATEGORY
    DESCRIPTION = "One-step and any-step flow-map sampler for super-resolution (use with SamplerCustomAdvanced)."

    def get_sampler(self, family, start_mode, gamma, bridge_scale):
        return (ksampler(sample_flow_map, start_mode, bridge_scale, family=family_choice(family), gamma=gamma),)


class OneStepSRConsistencySampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "start_mode": START_MODE,
            "bridge_scale": BRIDGE_SCALE,
        }}

    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("sampler",)
    FUNCTION = "get_sampler"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Consistency sampler: every step jumps straight to the HR estimate; with more than one "
                   "step it re-noises with fresh noise in between.")

    def get_sampler(self, start_mode, bridge_scale):
        return (ksampler(sample_consistency, start_mode, bridge_scale),)


class OneStepSRGuider:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The (SR-adapted) diffusion model."}),
            "positive": ("CONDITIONING", {"tooltip": "What the HR image should be (e.g. sharp, detailed)."}),
            "negative": ("CONDITIONING", {"tooltip": "What to steer away from (blur, artifacts)."}),
            "scale": GUIDANCE,
            "start_t": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "Guidance is on for times t in [end_t, start_t] (t = 1 source)."}),
            "end_t": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                "tooltip": "Lower end of the guidance interval."}),
        }}

    RETURN_TYPES = ("GUIDER",)
    RETURN_NAMES = ("guider",)
    FUNCTION = "get_guider"
    CATEGORY = CATEGORY
    DESCRIPTION = "Positive/negative prompt guidance generalised to flow maps, batched in one forward."

    def get_guider(self, model, positive, negative, scale, start_t, end_t):
        return (flow_map_guider(model, positive, negative, scale, end_t, start_t),)
