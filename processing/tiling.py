"""Tiled application of an image-to-image network, for images (or latents) too large for memory.

``tiled_apply(x, fn, scale, tile)`` cuts ``x`` [B, C, H, W] into overlapping tiles, runs
``fn`` on each ([B, C, h, w] -> [B, C', scale*h, scale*w]) and blends the results with
weights that ramp across each overlap (cosine or Gaussian profile) and are normalised to sum
to one everywhere, so a pointwise ``fn`` gives exactly its untiled result. Tiles are spread
evenly and shrunk to the smallest side needing as many tiles (less redundant work). Nothing assumes
pixels or 3 channels: for a ComfyUI latent, sizes are in latent cells and ``unit_px`` (8 for
most VAEs) turns the default overlap into at least ``MIN_OVERLAP_PX`` output pixels. If ``fn``
needs other inputs aligned with ``x`` (an LR latent, noise), stack them on the channel axis.

Out of memory, the tile side halves and the run starts again (as ComfyUI's upscale node does)
until ``min_tile``; ``callback(done, total)`` runs after every tile, and an exception raised
there (ComfyUI's interrupt) stops the run before the next tile.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch

from .overlap import MIN_OVERLAP_PX, default_overlap, min_tile as smallest_tile  # noqa: F401 (the tiling API)

BLEND_MODES = ("cosine", "gaussian")
# Assumed available RAM when psutil is missing: small enough to be safe on any machine.
CPU_FALLBACK_FREE_BYTES = 2 * 1024 ** 3

logger = logging.getLogger(__name__)


class TileOutOfMemoryError(RuntimeError):
    """Out of memory even with the smallest tile allowed."""


def tile_starts(size: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Start offsets of tiles of ``tile`` cells covering ``size``, evenly spread, neighbours
    overlapping by at least ``overlap``; starts are multiples of ``multiple``, the last tile
    ends at ``size``. One tile when ``size <= tile``."""
    span = size - tile
    if span <= 0:
        return [0]
    stride = (tile - overlap) // multiple * multiple
    if stride < 1:
        raise ValueError(f"tile ({tile}) must exceed overlap ({overlap}) by at least multiple ({multiple}); "
                         f"raise the tile size or lower the overlap")
    gaps = math.ceil(span / stride)
    cells = span // multiple
    return [i * cells // gaps * multiple for i in range(gaps)] + [span]


def balanced_tile(size: int, tile: int, overlap: int, multiple: int = 1) -> int:
    """The smallest tile side (a multiple of ``multiple``, at most ``tile``) that covers ``size``
    with as few tiles as ``tile`` does: e.g. 256 cells in tiles of 128 with overlap 16 need three
    tiles, and three tiles of 96 do, with a third less work."""
    if size <= tile:
        return size
    count = len(tile_starts(size, tile, overlap, multiple))
    side = max(math.ceil((size + (count - 1) * overlap) / count), overlap + multiple)
    side = min(tile, math.ceil(side / multiple) * multiple)
    # starts round down to the multiple, which can cost a tile more at this side: grow it back
    while side < tile and len(tile_starts(size, side, overlap, multiple)) > count:
        side += multiple
    return side


def ramp(length: int, blend: str) -> torch.Tensor:
    """Rising weight profile over ``length`` samples, strictly inside (0, 1].

    Cosine: sin^2 at sample centres, so a ramp plus its mirror sums to exactly 1.
    Gaussian: exp(-(distance to the inner end)^2 / 2 sigma^2), sigma = length / 3.
    """
    position = (torch.arange(length, dtype=torch.float64) + 0.5) / length
    if blend == "cosine":
        return torch.sin(0.5 * math.pi * position) ** 2
    if blend == "gaussian":
        return torch.exp(-0.5 * (3 * (1 - position)) ** 2)
    raise ValueError(f"blend {blend!r} is unknown; choose one of {', '.join(BLEND_MODES)}")


def axis_weights(starts: list[int], tile: int, size: int, scale: int, blend: str) -> list[torch.Tensor]:
    """Per tile, its 1-D blending weights in output cells, normalised so that over the whole
    axis the tiles' weights sum to one. Ramps span each overlap with a neighbour (at most half
    the tile); edges on the image border are not ramped."""
    length = tile * scale
    raw = []
    for index, start in enumerate(starts):
        weight = torch.ones(length, dtype=torch.float64)
        if index > 0:
            fade_in = min((starts[index - 1] + tile - start) * scale, length // 2)
            weight[:fade_in] = ramp(fade_in, blend)
        if index < len(starts) - 1:
            fade_out = min((start + tile - starts[index + 1]) * scale, length // 2)
            weight[length - fade_out:] = ramp(fade_out, blend).flip(0)
        raw.append(weight)
    total = torch.zeros(size * scale, dtype=torch.float64)
    for start, weight in zip(starts, raw):
        total[start * scale:start * scale + length] += weight
    return [weight / total[start * scale:start * scale + length] for start, weight in zip(starts, raw)]


def is_out_of_memory(error: BaseException) -> bool:
    """True for torch's OutOfMemoryError and allocator failures reported as RuntimeError."""
    if isinstance(error, _OOM_ERRORS):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


_OOM_ERRORS = tuple({getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)} - {None})


def free_memory(device) -> int:
    """Bytes available for new tensors on ``device``: CUDA free memory plus PyTorch's cached
    but unused blocks; otherwise available system RAM (psutil), or CPU_FALLBACK_FREE_BYTES."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        stats = torch.cuda.memory_stats(device)
        return free + stats.get("reserved_bytes.all.current", 0) - stats.get("allocated_bytes.all.current", 0)
    try:
        import psutil
    except ImportError:
        return CPU_FALLBACK_FREE_BYTES
    return psutil.virtual_memory().available


class OutputTooLargeError(ValueError):
    """An output that cannot fit in free memory, refused before it is made."""


# Full-size float32 copies of the output an upscale holds at its peak (the enlarged input, the sample,
# the blended or decoded result, the clamped image): a lower bound, so only outputs that cannot fit
# are refused, before the first of them is allocated.
FULL_SIZE_COPIES = 4


def check_output_fits(batch: int, height: int, width: int, channels: int, what: str, fix: str,
                      device="cpu") -> None:
    """Raise OutputTooLargeError, naming `what` (e.g. "scale_by 16"), the memory needed and `fix`, when
    FULL_SIZE_COPIES float32 copies of a [batch, channels >= 3, height, width] output exceed the free
    memory on `device`."""
    needed = FULL_SIZE_COPIES * 4 * batch * height * width * max(channels, 3)
    free = free_memory(device)
    if needed > free:
        images = f" (batch {batch})" if batch > 1 else ""
        raise OutputTooLargeError(f"{what} makes a {width}x{height} output{images}, which needs at least "
                                  f"{needed / 1e6:,.0f} MB of memory; {free / 1e6:,.0f} MB is free: {fix}")


def auto_tile_size(bytes_per_pixel: float, device="cpu", *, free_bytes: int | None = None, fraction: float = 0.5,
                   multiple: int = 8, min_tile: int = 64, max_tile: int = 2048) -> int:
    """Largest square tile side (input cells, a multiple of ``multiple``, clamped to
    [min_tile, max_tile]) whose working memory ``side**2 * bytes_per_pixel`` fits in ``fraction``
    of the free memory on ``device`` (``free_bytes`` when the caller knows it better: ComfyUI's count).
    ``bytes_per_pixel`` is the caller's estimate of the peak bytes ``fn`` needs per input cell (batch
    included)."""
    if bytes_per_pixel <= 0:
        raise ValueError(f"bytes_per_pixel must be > 0, got {bytes_per_pixel}")
    free = free_memory(device) if free_bytes is None else free_bytes
    side = math.isqrt(int(fraction * free / bytes_per_pixel)) // multiple * multiple
    return max(min_tile, min(max_tile, side))


def _checked(result, batch: int, height: int, width: int, scale: int) -> torch.Tensor:
    expected = (batch, scale * height, scale * width)
    if not isinstance(result, torch.Tensor) or result.ndim != 4 or (result.shape[0], *result.shape[-2:]) != expected:
        raise ValueError(f"fn returned {getattr(result, 'shape', type(result).__name__)} for a {height}x{width} "
                         f"tile of batch {batch}; expected [{batch}, C, {expected[1]}, {expected[2]}]: check "
                         f"that scale={scale} matches fn")
    return result


def _tiled_pass(x, fn, scale, tile, overlap, blend, multiple, callback, output_device):
    (batch, _, height, width), output_device = x.shape, output_device or x.device
    tile_h, tile_w = balanced_tile(height, tile, overlap, multiple), balanced_tile(width, tile, overlap, multiple)
    starts_y, starts_x = tile_starts(height, tile_h, overlap, multiple), tile_starts(width, tile_w, overlap, multiple)
    total = len(starts_y) * len(starts_x)
    if total == 1:  # all weights are one
        result = _checked(fn(x), batch, height, width, scale).to(output_device)
        if callback is not None:
            callback(1, 1)
        return result
    weights_y = axis_weights(starts_y, tile_h, height, scale, blend)
    weights_x = axis_weights(starts_x, tile_w, width, scale, blend)
    done, output = 0, None
    for y, weight_y in zip(starts_y, weights_y):
        for x0, weight_x in zip(starts_x, weights_x):
            result = _checked(fn(x[..., y:y + tile_h, x0:x0 + tile_w]), batch, tile_h, tile_w, scale)
            if output is None:
                out_dtype = result.dtype
                output = torch.zeros(batch, result.shape[1], scale * height, scale * width, device=output_device,
                                     dtype=torch.promote_types(out_dtype, torch.float32))
            region = output[..., scale * y:scale * (y + tile_h), scale * x0:scale * (x0 + tile_w)]
            region.addcmul_(result.to(output) * weight_y.to(output)[:, None], weight_x.to(output))
            done += 1
            if callback is not None:
                callback(done, total)
    return output.to(out_dtype)


def tiled_apply(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], scale: int, tile: int,
                overlap: int | None = None, *, blend: str = "cosine", unit_px: int = 1, multiple: int = 1,
                min_tile: int | None = None, callback: Callable[[int, int], None] | None = None,
                output_device=None) -> torch.Tensor:
    """``fn`` applied to ``x`` [B, C, H, W] tile by tile, blended: [B, C', scale*H, scale*W].

    tile (the largest tile side used), overlap, min_tile, multiple are in input cells (pixels,
    or latent cells); see ``balanced_tile`` for the side actually used. overlap
    defaults to ``default_overlap(scale, unit_px)``; tile must exceed it unless the image fits
    in one tile; min_tile, the smallest tile tried after out-of-memory errors, defaults to
    max(2 * overlap, multiple).
    With ``multiple`` > 1, H, W and tile must be multiples of it (pad with
    ``images.pad_to_multiple``) and tile offsets are too. callback(done, total) after each
    tile; after an out-of-memory retry ``done`` restarts at 0 with the new ``total``.
    Returns on ``output_device`` (default: x's) in the dtype ``fn`` returns.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"tiled_apply needs x as a [B, C, H, W] tensor, got {getattr(x, 'shape', type(x).__name__)}")
    for name, value in (("scale", scale), ("tile", tile), ("multiple", multiple), ("unit_px", unit_px)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if blend not in BLEND_MODES:
        raise ValueError(f"blend {blend!r} is unknown; choose one of {', '.join(BLEND_MODES)}")
    overlap = default_overlap(scale, unit_px) if overlap is None else overlap
    min_tile = smallest_tile(overlap, multiple) if min_tile is None else min_tile
    if overlap < 0 or min_tile <= overlap:
        raise ValueError(f"need 0 <= overlap < min_tile, got overlap={overlap}, min_tile={min_tile}; "
                         f"lower the overlap or raise min_tile")
    if tile % multiple or x.shape[-2] % multiple or x.shape[-1] % multiple:
        raise ValueError(f"tile ({tile}) and the input size {x.shape[-1]}x{x.shape[-2]} must be multiples of "
                         f"{multiple}; pad the input with images.pad_to_multiple and pick a tile that is a multiple")
    while True:
        try:
            return _tiled_pass(x, fn, scale, tile, overlap, blend, multiple, callback, output_device)
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            smaller = min(tile, max(x.shape[-2:])) // 2 // multiple * multiple
            if smaller < min_tile:
                raise TileOutOfMemoryError(
                    f"out of memory with a {min(tile, max(x.shape[-2:]))}-cell tile and min_tile={min_tile}: "
                    f"free memory (unload other models, close other programs), lower the batch size or "
                    f"scale, or lower min_tile / overlap") from error
            logger.warning("out of memory with tile %d; retrying with tile %d", tile, smaller)
        tile = smaller
        if torch.cuda.is_available():  # fn may run on the GPU whatever x's device
            torch.cuda.empty_cache()
