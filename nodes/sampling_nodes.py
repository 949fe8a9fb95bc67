"""SIGMAS, SAMPLER and GUIDER nodes: thin wrappers around samplers/ for SamplerCustomAdvanced."""

from __future__ import annotations

from ..bridge.sampling import (consistency_sampler, family_choice, flow_map_guider, flow_map_sampler,
                               flow_map_sigmas)
from ..bridge.widgets import BRIDGE_SCALE, FAMILY, GAMMA, GUIDANCE, SHIFT, START_MODE, STEPS, T_START

CATEGORY = "OneStep SR/sampling"


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
        return (flow_map_sampler(start_mode, bridge_scale, family_choice(family), gamma),)


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
        return (consistency_sampler(start_mode, bridge_scale),)


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
