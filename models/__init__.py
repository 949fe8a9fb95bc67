"""Pure PyTorch: no ComfyUI imports here."""

from .flow_map_sr import FlowMapSRNet, load_model, save_model
from .pipeline import upscale

__all__ = ["FlowMapSRNet", "load_model", "save_model", "upscale"]
