"""OneStep SR: one-step and any-step diffusion super-resolution for ComfyUI.

ComfyUI imports this folder from custom_nodes/ and reads NODE_CLASS_MAPPINGS. Installed with
pip, the same code is the package `onestep_sr` (samplers, models, training, CLI); the nodes are
loaded only inside a ComfyUI process, which has already imported `comfy`.
"""

import sys

if "comfy" in sys.modules:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
