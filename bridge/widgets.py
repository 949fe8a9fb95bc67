"""The nodes' widget specs whose choices or defaults come from the core, and those several nodes share:
each widget is defined (and explained) once."""

from ..adapters.formats import ADAPTER_FORMATS
from ..processing.colour import COLOUR_METHODS
from ..processing.tiling import MIN_OVERLAP_PX
from ..samplers.flow_map import FAMILIES
from ..samplers.guidance import DEFAULT_NEGATIVE_PROMPT, DEFAULT_POSITIVE_PROMPT
from ..samplers.start import START_MODES
from ..training.discriminators import DISCRIMINATORS

FAMILY_CHOICES = ["auto", *FAMILIES]
UPSCALE_METHODS = ["bicubic", "lanczos", "bilinear", "area", "nearest-exact"]

FAMILY = (FAMILY_CHOICES, {"default": "auto", "tooltip": (
    "How the MODEL takes the jump's two times: auto = the model's own; plain = t only (flow-matching or "
    "one-step LoRA models), shortcut = (t, t - s), two_time = (t, s) for Lagrangian/Eulerian/MeanFlow maps, dual_branch = t and s on "
    "separate time embedders with the LR latent as condition tokens (a MODEL through 'OneStep SR Dual-Branch "
    "Patch').")})
START_MODE = (list(START_MODES), {"default": "lr", "tooltip": (
    "Where sampling starts: lr = the LR latent at t = 1 (FlowSR); lr_at_T = the LR latent at the schedule's "
    "start time (FluxSR); noise = pure noise, LR as condition; noised_lr = LR latent noised to the start time "
    "(img2img); bridge = LR latent plus bridge noise.")})
GAMMA = ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": (
    "0 = deterministic chain of jumps; > 0 jumps to 0 and re-noises with this fraction of fresh noise; "
    "1 = consistency-style.")})
BRIDGE_SCALE = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip": (
    "Bridge noise scale b in z_lr + b * sqrt(t (1 - t)) * noise (start mode 'bridge' only).")})
STEPS = ("INT", {"default": 1, "min": 1, "max": 1000,
                 "tooltip": "Number of jumps (network evaluations): 1 = one-step SR, more = any-step."})
T_START = ("FLOAT", {"default": 1.0, "min": 0.001, "max": 1.0, "step": 0.001, "tooltip": (
    "Start time: 1 for start modes lr/noise; T for lr_at_T; the noise level for noised_lr/bridge.")})
SHIFT = ("FLOAT", {"default": 1.0, "min": 0.01, "max": 100.0, "step": 0.01,
                   "tooltip": "FLUX/SD3 time shift; > 1 spends more steps near the start."})
GUIDANCE = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 30.0, "step": 0.05, "tooltip": (
    "Guidance weight w: 1 = positive only (one network evaluation per step), 0 = negative only, "
    "> 1 = stronger guidance.")})
SCALE_BY = ("FLOAT", {"default": 4.0, "min": 1.0, "max": 16.0, "step": 0.5,
                      "tooltip": "Upscale factor (x2, x4, x8 ...)."})
UPSCALE_METHOD = (UPSCALE_METHODS, {"default": "bicubic", "tooltip": "How the LR image is enlarged before encoding."})
VAE_TILE_SIZE = ("INT", {"default": 1024, "min": 0, "max": 8192, "step": 64, "tooltip": (
    "Images larger than this many pixels on a side are encoded/decoded with ComfyUI's tiled VAE (saves memory "
    "on big outputs); 0 = never tile.")})
COLOUR_METHOD = (list(COLOUR_METHODS), {"default": "wavelet", "tooltip": (
    "Match the output's colours to the LR image: wavelet takes the LR's low frequencies and keeps the output's "
    "detail; adain / lab match per-channel mean and std (in RGB / CIELAB); none leaves it.")})
TILE_OVERLAP = ("INT", {"default": 0, "min": 0, "max": 1024, "step": 8, "tooltip": (
    f"Overlap of neighbouring tiles in output pixels, blended with a cosine ramp; 0 = automatic ({MIN_OVERLAP_PX} px, "
    "rounded up to whole latent cells).")})
ADAPTER_FORMAT = (["auto", *ADAPTER_FORMATS], {"default": "auto",
                                             "tooltip": "The file's layout; auto detects it from keys and metadata."})
DISCRIMINATOR = (list(DISCRIMINATORS), {"default": "patch", "tooltip": (
    "features: light heads on the frozen base network; patch: a small PatchGAN on the image.")})
POSITIVE_PROMPT = ("STRING", {"multiline": True, "default": DEFAULT_POSITIVE_PROMPT,
                              "tooltip": "What a good HR image looks like."})
NEGATIVE_PROMPT = ("STRING", {"multiline": True, "default": DEFAULT_NEGATIVE_PROMPT,
                              "tooltip": "What SR should steer away from."})
TILE_SIZE = ("INT", {"default": 0, "min": 0, "max": 16384, "step": 8, "tooltip": (
    "Sample in tiles of this many output pixels (blended over the tile overlap); 0 = automatic: as large as "
    "ComfyUI's free memory allows for this model (one tile when the image fits). Halved on out-of-memory.")})
REALISM = ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": (
    "OneStep SR default model: 0 = the faithful output; up to 1 = its realism adapter at that strength (more natural "
    "texture, a little less fidelity). The same as the stock LoraLoaderModelOnly with onestep_sr_realism.safetensors.")})


def widget_defaults(input_types: dict) -> dict:
    """{name: default} of the widgets (inputs whose options give a default) in a node's INPUT_TYPES."""
    return {name: spec[1]["default"] for section in ("required", "optional")
            for name, spec in input_types.get(section, {}).items() if len(spec) == 2 and "default" in spec[1]}
