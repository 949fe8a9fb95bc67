"""Input specs shared by several nodes, so each widget is defined (and explained) once."""

from ..processing import COLOUR_METHODS
from ..samplers import FAMILIES, START_MODES

FAMILY_CHOICES = ["auto", *FAMILIES]
UPSCALE_METHODS = ["bicubic", "lanczos", "bilinear", "area", "nearest-exact"]

FAMILY = (FAMILY_CHOICES, {"default": "auto", "tooltip": (
    "How the MODEL takes the jump's two times: auto = the model's own; plain = t only (flow-matching or "
    "one-step LoRA models), shortcut = (t, t - s), two_time = (t, s) for Lagrangian/Eulerian/MeanFlow maps, "
    "dual_branch = t on noise tokens, s on condition tokens.")})
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
