"""PNG figures of the benchmark suite (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MIB = 2**20


def scaling_plot(rows: list[dict], exponent: float, path: Path) -> None:
    """Time (log-log, with the fitted power law) and peak memory against output pixels."""
    pixels = np.array([row["output"] ** 2 for row in rows], dtype=np.float64)
    seconds = np.array([row["seconds"] for row in rows])
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.loglog(pixels, seconds, "o-", label="measured")
    fit = [i for i, row in enumerate(rows) if np.isfinite(exponent) and row["output"] >= 512]
    if fit:
        anchor = fit[-1]
        left.loglog(pixels[fit], seconds[anchor] * (pixels[fit] / pixels[anchor]) ** exponent, "--",
                    label=f"fit: time ~ pixels^{exponent:.3f}")
        left.loglog(pixels[fit], seconds[anchor] * pixels[fit] / pixels[anchor], ":", color="grey",
                    label="linear (exponent 1)")
    left.set_xlabel("output pixels")
    left.set_ylabel("seconds")
    left.set_title("x4 upscale time")
    left.legend()
    peak = np.array([row["peak_rss"] for row in rows]) / MIB
    without_output = np.array([row["peak_rss"] - row["output_bytes"] for row in rows]) / MIB
    right.semilogx(pixels, peak, "o-", label="peak RSS")
    right.semilogx(pixels, without_output, "s-", label="peak RSS - output image bytes")
    for index, row in enumerate(rows):
        right.annotate(f"{row['tiles']} tile{'s' if row['tiles'] > 1 else ''}", (pixels[index], peak[index]),
                       textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    right.set_xlabel("output pixels")
    right.set_ylabel("MiB")
    right.set_title("memory")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def quality_plot(summary: dict, path: Path) -> None:
    """Per scale: mean PSNR against seconds per output megapixel, one point per method."""
    scales = sorted(summary)
    figure, axes = plt.subplots(1, len(scales), figsize=(5.5 * len(scales), 4.2), squeeze=False)
    for axis, scale in zip(axes[0], scales):
        for name, row in summary[scale].items():
            axis.scatter(max(row["s_per_mp"], 1e-3), row["PSNR"], s=40)
            axis.annotate(name, (max(row["s_per_mp"], 1e-3), row["PSNR"]), textcoords="offset points",
                          xytext=(5, 4), fontsize=8)
        axis.set_xscale("log")
        axis.set_xlabel("seconds per output megapixel (log)")
        axis.set_ylabel("mean PSNR (dB)")
        axis.set_title(f"x{scale}, held-out photos")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
