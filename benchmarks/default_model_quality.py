"""Quality of the default SR model on the held-out photos (one command):

    python benchmarks/default_model_quality.py [--weights weights/onestep_sr_default.safetensors]

For each held-out photo (onestep_sr.training.photos.HELD_OUT, centre crop <= 512², a multiple of 8)
and each scale (×4, ×8): the HR image is degraded by the package's one bicubic definition
(processing.resample.bicubic_downscale), every method upscales the LR image, and each metric
compares the result with the HR image. PSNR and SSIM are computed on RGB in [0, 1] over the
whole image (no border shave; SSIM: scikit-image, 7x7 Gaussian-free window, channel-averaged).
Writes benchmarks/results/default_model_quality.md with the machine and date.

Extending: a method is ``name -> callable(lr [1, 3, h, w] in [0, 1], scale) -> sr``; a metric is
``name -> callable(sr, hr) -> float`` (a no-reference metric ignores hr). A module
``benchmarks/peers.py`` with ``peer_methods() -> dict`` and/or ``peer_metrics() -> dict`` is
picked up automatically (e.g. Real-ESRGAN x4plus, NIQE) so that all methods run in one table.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from plain_reference import PLAIN_NAME
from onestep_sr.models.flow_map_sr import load_model
from onestep_sr.models.pipeline import upscale
from onestep_sr.processing.resample import bicubic_downscale, bicubic_upscale
from onestep_sr.training.photos import HELD_OUT, held_out_image
from onestep_sr.training.sr_data import SCALES

HERE = Path(__file__).resolve().parent
DEFAULT_WEIGHTS = HERE.parent / "weights" / "onestep_sr_default.safetensors"
DEFAULT_OUTPUT = HERE / "results" / "default_model_quality.md"
STEPS = (1, 2, 4)
# 1-step rows with guidance (pipeline.softened as the negative): what guidance trades (PSNR for NIQE)
GUIDANCE = (1.5,)


def _array(image: torch.Tensor) -> np.ndarray:
    return image[0].permute(1, 2, 0).clamp(0, 1).double().numpy()


def psnr(sr: torch.Tensor, hr: torch.Tensor) -> float:
    return float(peak_signal_noise_ratio(_array(hr), _array(sr), data_range=1.0))


def ssim(sr: torch.Tensor, hr: torch.Tensor) -> float:
    return float(structural_similarity(_array(hr), _array(sr), data_range=1.0, channel_axis=-1))


METRICS = {"PSNR": psnr, "SSIM": ssim}


def model_methods(net, steps=STEPS, guidance=()) -> dict:
    """bicubic, the model at each step count and at 1 step with each guidance weight, as
    name -> callable(lr, scale)."""
    methods = {"bicubic": bicubic_upscale}
    for n in steps:
        methods[f"default {n}-step"] = functools.partial(upscale, net, steps=n)
    for weight in guidance:
        methods[f"default 1-step, guidance {weight:g}"] = functools.partial(upscale, net, guidance=weight)
    return methods


def peer_hooks() -> tuple[dict, dict]:
    """(methods, metrics) from benchmarks/peers.py when that module exists."""
    path = HERE / "peers.py"
    if not path.exists():
        return {}, {}
    spec = importlib.util.spec_from_file_location("onestep_sr_benchmark_peers", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    methods = module.peer_methods() if hasattr(module, "peer_methods") else {}
    metrics = module.peer_metrics() if hasattr(module, "peer_metrics") else {}
    return methods, metrics


def evaluate(methods: dict, metrics: dict = METRICS, keys=HELD_OUT, scales=SCALES, size: int = 512):
    """{(scale, key, method): {metric: value}} and the seconds each method took per scale."""
    results, seconds = {}, {}
    for key in keys:
        hr = held_out_image(key, size)
        for scale in scales:
            lr = bicubic_downscale(hr, scale)
            for name, method in methods.items():
                started = time.perf_counter()
                sr = method(lr, scale)
                seconds[(scale, name)] = seconds.get((scale, name), 0.0) + time.perf_counter() - started
                if sr.shape != hr.shape:
                    raise ValueError(f"method {name!r} returned {tuple(sr.shape)} for x{scale}, "
                                     f"expected {tuple(hr.shape)}")
                results[(scale, key, name)] = {m: fn(sr, hr) for m, fn in metrics.items()}
    return results, seconds


def means(results: dict, scale: int, method: str, keys=HELD_OUT) -> dict:
    rows = [results[(scale, key, method)] for key in keys]
    return {m: float(np.nanmean([r[m] for r in rows])) for m in rows[0]}  # NaN: no NIQE for that photo


def check_bars(results: dict, keys=HELD_OUT) -> list[tuple[str, bool, str]]:
    """The issue's quality bars: (bar, passed, measured)."""
    bic4, one4 = means(results, 4, "bicubic", keys), means(results, 4, "default 1-step", keys)
    bic8, one8 = means(results, 8, "bicubic", keys), means(results, 8, "default 1-step", keys)
    bars = [
        ("x4 1-step PSNR >= bicubic + 1.5 dB", one4["PSNR"] - bic4["PSNR"] >= 1.5,
         f"{one4['PSNR'] - bic4['PSNR']:+.2f} dB"),
        ("x4 1-step SSIM >= bicubic + 0.03", one4["SSIM"] - bic4["SSIM"] >= 0.03,
         f"{one4['SSIM'] - bic4['SSIM']:+.4f}"),
        ("x8 1-step PSNR >= bicubic + 1.2 dB", one8["PSNR"] - bic8["PSNR"] >= 1.2,
         f"{one8['PSNR'] - bic8['PSNR']:+.2f} dB"),
    ]
    for scale in SCALES:
        one = means(results, scale, "default 1-step", keys)["PSNR"]
        if (scale, keys[0], PLAIN_NAME) in results:
            # the bars are its plain network's figures (+1.8 / +1.5 dB) less 0.3 dB
            plain = means(results, scale, PLAIN_NAME, keys)["PSNR"]
            bars.append((f"x{scale} 1-step PSNR >= plain reference - 0.3 dB", one >= plain - 0.3,
                         f"{one - plain:+.2f} dB"))
        for n in STEPS[1:]:
            name = f"default {n}-step"
            if (scale, keys[0], name) in results:
                more = means(results, scale, name, keys)["PSNR"]
                bars.append((f"x{scale} {n}-step PSNR >= 1-step - 0.3 dB", more >= one - 0.3,
                             f"{more - one:+.2f} dB"))
    return bars


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else platform's answer."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(results, seconds, methods, metrics, weights, keys=HELD_OUT) -> str:
    lines = ["# Default model quality (held-out photos, bicubic degradation)", "",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
             f"- machine: {platform.machine()}, {cpu_name()}, {os.cpu_count()} cores, "
             f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, Python {platform.python_version()}",
             f"- weights: {weights}",
             f"- command: python benchmarks/default_model_quality.py {' '.join(sys.argv[1:])}".rstrip(),
             "- PSNR (dB) and SSIM on RGB in [0, 1], whole image, no border shave; HR = centre crop "
             "<= 512² of each held-out photo; LR = processing.resample.bicubic_downscale", ""]
    names = list(methods)
    for scale in SCALES:
        lines += [f"## x{scale}: mean over {len(keys)} held-out photos", "",
                  "| method | " + " | ".join(metrics) + " | seconds (all photos) |",
                  "|---" * (len(metrics) + 2) + "|"]
        for name in names:
            mean = means(results, scale, name, keys)
            lines.append(f"| {name} | " + " | ".join(f"{mean[m]:.4f}" if m == "SSIM" else f"{mean[m]:.2f}"
                                                      for m in metrics)
                         + f" | {seconds[(scale, name)]:.1f} |")
        lines += ["", f"### x{scale} per photo ({' / '.join(metrics)})", "",
                  "| photo | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for key in keys:
            cells = [" / ".join(f"{results[(scale, key, n)][m]:.4f}" if m == "SSIM"
                                else f"{results[(scale, key, n)][m]:.2f}" for m in metrics) for n in names]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Quality bars (issue 3)", "", "| bar | measured | passed |", "|---|---|---|"]
    lines += [f"| {bar} | {value} | {'yes' if ok else 'NO'} |" for bar, ok, value in check_bars(results, keys)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS),
                        help="exported weights or a training checkpoint (its EMA weights)")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--images", type=int, default=len(HELD_OUT), help="use the first N held-out photos")
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    parser.add_argument("--guidance", type=float, nargs="*", default=list(GUIDANCE),
                        help="guidance weights for extra 1-step rows (none: no such rows)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-peers", action="store_true", help="skip benchmarks/peers.py")
    args = parser.parse_args(argv)
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        parser.error(f"{output} exists; pass --overwrite to replace it or choose another --output")
    if 1 not in args.steps:
        parser.error("--steps must include 1 (the bars compare against 1-step)")
    torch.set_num_threads(args.threads)
    net = load_model(args.weights)
    methods, metrics = model_methods(net, args.steps, args.guidance), dict(METRICS)
    if not args.no_peers:
        peer_methods, peer_metrics = peer_hooks()
        methods.update(peer_methods)
        metrics.update(peer_metrics)
    keys = HELD_OUT[: args.images]
    results, seconds = evaluate(methods, metrics, keys)
    text = report(results, seconds, methods, metrics, args.weights, keys)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
