"""SIGMAS, SAMPLER and GUIDER nodes: thin wrappers around samplers/ for SamplerCustomAdvanced."""

from __future__ import annotations

import comfy.samplers
import torch

from ..samplers import (FAMILIES, START_MODES, sample_consistency, sample_flow_map, scale_at,
                        shifted_times)
from .comfy_glue import family_choice, ksampler, sigma_of_time

CATEGORY = "OneStep SR/sampling"

FAMILY_CHOICES = ["auto", *FAMILIES]
FAMILY_TIP = ("How the MODEL takes the jump's two times: auto = the model's own; plain = t only (flow-matching or one-step "
              "LoRA models), shortcut = (t, t - s), two_time = (t, s) for Lagrangian/Eulerian/MeanFlow "
              "maps, dual_branch = t on noise tokens, s on condition tokens.")
START_TIP = ("Where sampling starts: lr = the LR latent at t = 1 (FlowSR); lr_at_T = the LR latent at "
             "the schedule's start time (FluxSR); noise = pure noise, LR as condition; noised_lr = LR "
             "latent noised to the start time (img2img); bridge = LR latent plus bridge noise.")
BRIDGE_TIP = "Bridge noise scale b in z_lr + b * sqrt(t (1 - t)) * noise (start mode 'bridge' only)."


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
            "steps": ("INT", {"default": 1, "min": 1, "max": 1000,
                              "tooltip": "Number of jumps (network evaluations). 1 = one-step SR."}),
            "t_start": ("FLOAT", {"default": 1.0, "min": 0.001, "max": 1.0, "step": 0.001,
                                  "tooltip": "Start time: 1 for start modes lr/noise; T for lr_at_T; "
                                             "the noise level for noised_lr/bridge."}),
            "shift": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 100.0, "step": 0.01,
                                "tooltip": "FLUX/SD3 time shift; > 1 spends more steps near the start."}),
        }}

    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "schedule"
    CATEGORY = CATEGORY
    DESCRIPTION = "The any-step flow-map schedule: steps + 1 times from t_start down to 0."

    def schedule(self, model, steps, t_start, shift):
        return (flow_map_sigmas(model, steps, t_start, shift),)


class OneStepSRFlowMapSampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "family": (FAMILY_CHOICES, {"default": "auto", "tooltip": FAMILY_TIP}),
            "start_mode": (list(START_MODES), {"default": "lr", "tooltip": START_TIP}),
            "gamma": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                "tooltip": "0 = deterministic chain of jumps; > 0 jumps to 0 and re-noises "
                                           "with this fraction of fresh noise; 1 = consistency-style."}),
            "bridge_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                                       "tooltip": BRIDGE_TIP}),
        }}

    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"
    CATEGORY = CATEGORY
    DESCRIPTION = "One-step and any-step flow-map sampler for super-resolution (use with SamplerCustomAdvanced)."

    def get_sampler(self, family, start_mode, gamma, bridge_scale):
        return (ksampler(sample_flow_map, start_mode, bridge_scale, family=family_choice(family), gamma=gamma),)


class OneStepSRConsistencySampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "start_mode": (list(START_MODES), {"default": "lr", "tooltip": START_TIP}),
            "bridge_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                                       "tooltip": BRIDGE_TIP}),
        }}

    RETURN_TYPES = ("SAMPLER",)
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
            "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 30.0, "step": 0.05,
                                "tooltip": "Guidance weight w: 1 = positive only (one network evaluation "
                                           "per step), 0 = negative only, > 1 = stronger guidance."}),
            "start_t": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "Guidance is on for times t in [end_t, start_t] (t = 1 source)."}),
            "end_t": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                "tooltip": "Lower end of the guidance interval."}),
        }}

    RETURN_TYPES = ("GUIDER",)
    FUNCTION = "get_guider"
    CATEGORY = CATEGORY
    DESCRIPTION = "Positive/negative prompt guidance generalised to flow maps, batched in one forward."

    def get_guider(self, model, positive, negative, scale, start_t, end_t):
        return (flow_map_guider(model, positive, negative, scale, end_t, start_t),)
