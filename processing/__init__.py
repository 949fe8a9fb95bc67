"""Pure PyTorch image handling around the SR network: no ComfyUI imports here (nodes/ wraps them)."""

from .colour import COLOUR_METHODS, colour_correct, lab_to_rgb, match_mean_std, rgb_to_lab, wavelet_decompose
from .images import (DEFAULT_MIN_SIDE, PreparedImage, bchw_to_bhwc, bhwc_to_bchw, check_image, check_min_size,
                     crop, finish_image, pad_to_multiple, prepare_image, split_alpha, to_rgb)
from .tiling import (BLEND_MODES, MIN_OVERLAP_PX, TileOutOfMemoryError, auto_tile_size, balanced_tile, default_overlap,
                     free_memory, is_out_of_memory, tiled_apply)

__all__ = [
    "COLOUR_METHODS", "colour_correct", "lab_to_rgb", "match_mean_std", "rgb_to_lab", "wavelet_decompose",
    "DEFAULT_MIN_SIDE", "PreparedImage", "bchw_to_bhwc", "bhwc_to_bchw", "check_image", "check_min_size",
    "crop", "finish_image", "pad_to_multiple", "prepare_image", "split_alpha", "to_rgb",
    "BLEND_MODES", "MIN_OVERLAP_PX", "TileOutOfMemoryError", "auto_tile_size", "balanced_tile", "default_overlap",
    "free_memory", "is_out_of_memory", "tiled_apply",
]
