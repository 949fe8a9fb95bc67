"""Small PNG charts drawn with PIL (matplotlib is not a dependency): loss curves and 2-D scatters."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..files.atomic import atomic_write

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _save(image: Image.Image, path) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def smooth(values, weight: float = 0.9) -> np.ndarray:
    """Exponential smoothing (debiased) for a noisy training curve."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return np.asarray(out)


def loss_curve(losses, path: str | os.PathLike, title: str = "training loss",
               size: tuple[int, int] = (720, 400)) -> None:
    """Raw (light) and smoothed (dark) loss per step; log scale when the range spans >= 10x."""
    losses = np.asarray(losses, dtype=np.float64)
    if losses.size == 0:
        raise ValueError("no losses to plot yet")
    finite = losses[np.isfinite(losses)]
    log_y = finite.size > 0 and finite.min() > 0 and finite.max() / finite.min() >= 10
    transform = np.log10 if log_y else (lambda a: a)
    curves = [(losses, (170, 190, 220)), (smooth(losses), COLORS[0])]
    ys = transform(np.clip(finite, 1e-30, None) if log_y else finite)
    lo, hi = (ys.min(), ys.max()) if ys.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0

    width, height = size
    left, right, top, bottom = 70, 20, 30, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text((left, 8), title + (" (log scale)" if log_y else ""), fill="black", font=font)
    for frac in (0.0, 0.5, 1.0):
        value = lo + frac * (hi - lo)
        y = height - bottom - frac * (height - top - bottom)
        label = f"{10 ** value:.3g}" if log_y else f"{value:.3g}"
        draw.text((4, y - 6), label, fill="black", font=font)
    n = losses.size
    draw.text((left, height - bottom + 6), "1", fill="black", font=font)
    draw.text((width - right - 40, height - bottom + 6), f"step {n}", fill="black", font=font)
    for values, color in curves:
        points = []
        for i, v in enumerate(values):
            if not math.isfinite(v) or (log_y and v <= 0):
                continue
            x = left + (i / max(n - 1, 1)) * (width - left - right)
            y = height - bottom - (transform(v) - lo) / (hi - lo) * (height - top - bottom)
            points.append((x, y))
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        elif points:
            draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=color)
    _save(image, path)


def scatter_panels(panels: list[tuple[str, np.ndarray]], path: str | os.PathLike, columns: int = 4,
                   panel_size: int = 220, extent: float | None = None) -> None:
    """One square scatter of 2-D points per (title, points[N, 2]) panel, on shared axes."""
    if not panels:
        raise ValueError("no panels to draw")
    if extent is None:
        extent = float(max(np.abs(p).max() for _, p in panels)) * 1.05
    rows = math.ceil(len(panels) / columns)
    image = Image.new("RGB", (columns * panel_size, rows * (panel_size + 16)), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for k, (title, points) in enumerate(panels):
        ox, oy = (k % columns) * panel_size, (k // columns) * (panel_size + 16)
        draw.text((ox + 4, oy + 2), title, fill="black", font=font)
        oy += 16
        draw.rectangle([ox + 2, oy, ox + panel_size - 2, oy + panel_size - 2], outline=(160, 160, 160))
        scale = (panel_size - 8) / (2 * extent)
        for x, y in np.asarray(points, dtype=np.float64):
            if abs(x) <= extent and abs(y) <= extent:
                px, py = ox + 4 + (x + extent) * scale, oy + 2 + (extent - y) * scale
                draw.point((px, py), fill=COLORS[0])
    _save(image, path)
