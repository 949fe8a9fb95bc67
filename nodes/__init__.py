"""ComfyUI node registry of OneStep SR: node classes only, over bridge/ (the maths lives in the core)."""

from ..bridge.default_model import register_model_folder
from .ftd_nodes import OneStepSRTeacherPairs, OneStepSRTrainFTDLoRA
from .image_nodes import OneStepSRColourFix, OneStepSRConditioning, OneStepSRDecode, OneStepSRPrompts
from .loader_nodes import OneStepSRDualBranchPatch, OneStepSRLoadAdapter, OneStepSRLoadModel
from .sampling_nodes import (OneStepSRConsistencySampler, OneStepSRFlowMapSampler, OneStepSRGuider,
                             OneStepSRSchedule)
from .training_nodes import OneStepSRTrainLoRA
from .upscale_node import OneStepSRUpscale, OneStepSRUpscaleAdvanced

register_model_folder()

NODE_CLASS_MAPPINGS = {
    "OneStepSR_LoadModel": OneStepSRLoadModel,
    "OneStepSR_LoadAdapter": OneStepSRLoadAdapter,
    "OneStepSR_DualBranchPatch": OneStepSRDualBranchPatch,
    "OneStepSR_TrainLoRA": OneStepSRTrainLoRA,
    "OneStepSR_TeacherPairs": OneStepSRTeacherPairs,
    "OneStepSR_TrainFTDLoRA": OneStepSRTrainFTDLoRA,
    "OneStepSR_Conditioning": OneStepSRConditioning,
    "OneStepSR_Decode": OneStepSRDecode,
    "OneStepSR_Prompts": OneStepSRPrompts,
    "OneStepSR_ColourFix": OneStepSRColourFix,
    "OneStepSR_Schedule": OneStepSRSchedule,
    "OneStepSR_FlowMapSampler": OneStepSRFlowMapSampler,
    "OneStepSR_ConsistencySampler": OneStepSRConsistencySampler,
    "OneStepSR_Guider": OneStepSRGuider,
    # the id saved workflows hold for the one-click node is its advanced form, which gives what it always gave
    "OneStepSR_Upscale": OneStepSRUpscaleAdvanced,
    "OneStepSR_UpscaleSimple": OneStepSRUpscale,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "OneStepSR_LoadModel": "Load OneStep SR Model",
    "OneStepSR_LoadAdapter": "Load SR Adapter",
    "OneStepSR_DualBranchPatch": "OneStep SR Dual-Branch Patch",
    "OneStepSR_TrainLoRA": "Train SR LoRA",
    "OneStepSR_TeacherPairs": "OneStep SR Teacher Pairs",
    "OneStepSR_TrainFTDLoRA": "OneStep SR Train FTD LoRA",
    "OneStepSR_Conditioning": "OneStep SR Conditioning",
    "OneStepSR_Decode": "OneStep SR Decode",
    "OneStepSR_Prompts": "OneStep SR Prompts",
    "OneStepSR_ColourFix": "OneStep SR Colour Fix",
    "OneStepSR_Schedule": "OneStep SR Schedule",
    "OneStepSR_FlowMapSampler": "OneStep SR Flow Map Sampler",
    "OneStepSR_ConsistencySampler": "OneStep SR Consistency Sampler",
    "OneStepSR_Guider": "OneStep SR Flow Map Guider",
    "OneStepSR_Upscale": "OneStep SR Upscale (advanced)",
    "OneStepSR_UpscaleSimple": "OneStep SR Upscale",
}
