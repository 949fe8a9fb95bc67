"""How much neighbouring tiles overlap, without torch: the CLI checks --tile before it imports torch."""

from __future__ import annotations

import math

MIN_OVERLAP_PX = 64


def default_overlap(scale: int, unit_px: int = 1) -> int:
    """Overlap in input cells giving at least MIN_OVERLAP_PX output pixels."""
    return math.ceil(MIN_OVERLAP_PX / (scale * unit_px))


def min_tile(overlap: int, multiple: int = 1) -> int:
    """The smallest tile side that blends with its neighbours over `overlap`: two overlaps (and at least
    `multiple`)."""
    return max(2 * overlap, multiple)
