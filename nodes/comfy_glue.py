"""The few places where ComfyUI types meet the pure samplers: time <-> sigma, the start point
from the latent ComfyUI hands the sampler, and the family check. No maths of its own."""

from __future__ import annotations

import comfy.model_sampling
import comfy.samplers
import torch

from ..samplers import FAMILIES, START_MODES, VE_START_MODES, start_point

# Set on a ModelPatcher's model_options by loaders of OneStep SR models:
# {"families": the families it takes, "needs_text": whether it needs a text CONDITIONING,
#  "source_noise": the std of the noise on its LR source it was trained with,
#  "objective": the flow-map objective it was trained with (OneStep SR default models only)}.
MODEL_INFO_KEY = "onestep_sr_model"
NATIVE_MODEL_INFO = {"families": ("plain",), "needs_text": True, "source_noise": 0.0}


def model_info(model_patcher) -> dict:
    return model_patcher.model_options.get(MODEL_INFO_KEY, NATIVE_MODEL_INFO)


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
    accepted = model_info(model_patcher)["families"]
    if family is None:
        return accepted[0]
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
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
                            model_info(guider.model_patcher)["source_noise"]).to(x)
        return sample_fn(model, x, sigmas, extra_args, callback, disable,
                         family=check_family(guider.model_patcher, family),
                         parametrization=parametrization, **options)

    return comfy.samplers.KSAMPLER(sampler_function)
