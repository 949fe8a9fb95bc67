"""What OneStep SR knows about a MODEL, carried on its ModelPatcher's model_options."""

from __future__ import annotations

from dataclasses import dataclass

MODEL_INFO_KEY = "onestep_sr_model"


@dataclass(frozen=True)
class ModelInfo:
    """families: the sampler families the model takes (the first is its own); needs_text: whether it
    needs a text CONDITIONING; source_noise: the std of the noise on the LR source it was trained
    with; objective: the flow-map objective it was trained with, when its file records one (OneStep SR
    default models: adapters trained on it keep it as their consistency term)."""

    families: tuple[str, ...] = ("plain",)
    needs_text: bool = True
    source_noise: float = 0.0
    objective: str | None = None


# A native ComfyUI diffusion model: a one-time flow (or eps / v model) conditioned on text.
NATIVE_MODEL = ModelInfo()


def model_info(model_patcher) -> ModelInfo:
    return model_patcher.model_options.get(MODEL_INFO_KEY, NATIVE_MODEL)


def set_model_info(model_patcher, info: ModelInfo) -> None:
    model_patcher.model_options[MODEL_INFO_KEY] = info
