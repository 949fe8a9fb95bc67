"""Pure-PyTorch flow-map samplers: no ComfyUI imports here (nodes/ wraps them)."""

from .flow_map import (FAMILIES, PARAMETRIZATIONS, add_source, average_velocity,
                       denoised_from_velocity, jump, shifted_times, source_estimate, time_inputs)
from .guidance import (DEFAULT_NEGATIVE_PROMPT, DEFAULT_POSITIVE_PROMPT, guided_denoiser, mix,
                       scale_at)
from .sampling import (TARGET_KEY, flow_map_denoiser, sample_consistency, sample_flow_map, target_of,
                       with_target)
from .start import START_MODES, VE_START_MODES, start_point, start_uses_noise

__all__ = [
    "FAMILIES", "PARAMETRIZATIONS", "START_MODES", "VE_START_MODES", "TARGET_KEY",
    "DEFAULT_POSITIVE_PROMPT", "DEFAULT_NEGATIVE_PROMPT",
    "add_source", "average_velocity", "denoised_from_velocity", "jump", "shifted_times",
    "source_estimate", "time_inputs", "guided_denoiser", "mix", "scale_at",
    "flow_map_denoiser", "sample_consistency", "sample_flow_map", "target_of", "with_target", "start_point", "start_uses_noise",
]
