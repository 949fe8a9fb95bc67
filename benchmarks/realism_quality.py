"""Fidelity and realism of the default model on clean and real-world LR (one command):

    python benchmarks/realism_quality.py [--weights W] [--adapter A] [--baseline REV]

For each held-out photo (onestep_sr.training.photos.HELD_OUT: a face, text, fur, architecture, foliage,
skies; centre crops <= 512²), each scale (×4, ×8) and each degradation — clean (the package's bicubic
downscale) and real-world (training/degradations.py's second-order chain, seeded per photo and scale) —
every method upscales the LR image and is scored against the HR image: PSNR on RGB, PSNR on Y (border
of `scale` pixels shaved, the SR papers' convention), SSIM, ST-LPIPS with the AlexNet backbone (the
realism training uses VGG: the measure is not the loss), NIQE (no reference), and seconds per output
megapixel. Methods: bicubic, Real-ESRGAN x4plus (benchmarks/peers.py), the baseline default weights
(`--baseline`, a git revision whose weights/ are read with `git show`), and the new weights at each
`--realism` strength of the realism adapter (0 = the fidelity output; 2 and 4 steps at realism 0).

Writes benchmarks/results/realism_quality.md (machine, date, tables, the issue's targets met or
missed), realism_curve.png (PSNR against ST-LPIPS as the realism strength goes 0 -> 1, beside the other
methods) and realism_crops.png (LR, bicubic, realism 0 / 0.5 / 1, Real-ESRGAN, HR side by side).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from default_model_quality import cpu_name, psnr, ssim
from metrics import niqe_metric
from peers import PEER_NAME, load_realesrgan_x4plus, realesrgan_upscale

from onestep_sr.adapters.lora import merged_lora
from onestep_sr.files.atomic import atomic_write
from onestep_sr.files.cache import cache_root
from onestep_sr.models.flow_map_sr import load_model
from onestep_sr.models.pipeline import upscale
from onestep_sr.processing.resample import bicubic_downscale, bicubic_upscale
from onestep_sr.training.degradations import realistic_downscale
from onestep_sr.training.perceptual import perceptual_distance
from onestep_sr.training.photos import HELD_OUT, held_out_image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_WEIGHTS = REPO / "weights" / "onestep_sr_default.safetensors"
DEFAULT_ADAPTER = REPO / "weights" / "loras" / "onestep_sr_realism.safetensors"
BASELINE_REV = "9d39a24"  # the default model before real-world training
RESULTS = HERE / "results"
DEGRADATIONS = ("clean", "real-world")
LUMA = torch.tensor([65.481, 128.553, 24.966]) / 255


def real_world_lr(hr: torch.Tensor, scale: int, key: str) -> torch.Tensor:
    """The real-world LR of a held-out photo: the training chain, seeded by the photo and the scale."""
    seed = int.from_bytes(hashlib.sha256(f"{key}:{scale}".encode()).digest()[:8], "little")
    return realistic_downscale(hr, scale, np.random.default_rng(seed))


def psnr_y(sr: torch.Tensor, hr: torch.Tensor, scale: int) -> float:
    """PSNR on the luma Y (BT.601, [16, 235] range) with `scale` border pixels shaved."""
    y = [(image[0].permute(1, 2, 0) @ LUMA.to(image)) + 16 / 255 for image in (sr.clamp(0, 1), hr)]
    y = [image[scale:-scale, scale:-scale].double() for image in y]
    return float(10 * torch.log10(1 / (y[0] - y[1]).square().mean()))


def lpips_alex(sr: torch.Tensor, hr: torch.Tensor) -> float:
    with torch.no_grad():
        return float(perceptual_distance(sr * 2 - 1, hr * 2 - 1, "alex"))


def baseline_weights(revision: str) -> Path:
    """The default weights at git `revision`, written once into the cache."""
    target = cache_root() / "baselines" / f"onestep_sr_default_{revision}.safetensors"
    if not target.exists():
        data = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:weights/onestep_sr_default.safetensors"],
                              check=True, capture_output=True).stdout
        atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))
    return target


def realism_name(strength: float) -> str:
    return f"new, realism {strength:g}"


def methods_for(net, adapter: Path | None, strengths, baseline, peer) -> dict:
    """name -> callable(lr, scale) -> sr."""
    methods = {"bicubic": bicubic_upscale}
    if peer is not None:
        methods[PEER_NAME] = functools.partial(realesrgan_upscale, peer)
    if baseline is not None:
        methods["baseline (previous weights)"] = functools.partial(upscale, baseline)
    for strength in strengths:
        tuned = net if strength == 0 or adapter is None else merged_lora(net, adapter, strength)
        methods[realism_name(strength)] = functools.partial(upscale, tuned)
    for steps in (2, 4):
        methods[f"new, realism 0, {steps} steps"] = functools.partial(upscale, net, steps=steps)
    return methods


def evaluate(methods: dict, keys, scales, size: int, with_niqe: bool):
    """{(scale, degradation, key, method): {metric: value}}, seconds per output MP per (scale, method),
    and the images of the crops picture {(scale, degradation, key): {name: image}}."""
    results, seconds, pixels, images = {}, {}, {}, {}
    for key in keys:
        hr = held_out_image(key, size)
        for scale in scales:
            for degradation in DEGRADATIONS:
                lr = bicubic_downscale(hr, scale) if degradation == "clean" else real_world_lr(hr, scale, key)
                outputs = {"LR": lr, "HR": hr}
                for name, method in methods.items():
                    started = time.perf_counter()
                    with torch.no_grad():
                        sr = method(lr, scale).clamp(0, 1)
                    seconds[(scale, name)] = seconds.get((scale, name), 0.0) + time.perf_counter() - started
                    pixels[(scale, name)] = pixels.get((scale, name), 0) + sr.shape[-1] * sr.shape[-2]
                    scores = {"PSNR": psnr(sr, hr), "PSNR-Y": psnr_y(sr, hr, scale), "SSIM": ssim(sr, hr),
                              "ST-LPIPS": lpips_alex(sr, hr)}
                    if with_niqe:
                        scores["NIQE"] = niqe_metric(sr, hr)
                    results[(scale, degradation, key, name)] = scores
                    outputs[name] = sr
                images[(scale, degradation, key)] = outputs
    per_mp = {k: seconds[k] / (pixels[k] / 1e6) for k in seconds}
    return results, per_mp, images


def mean(results, scale, degradation, method, keys) -> dict:
    rows = [results[(scale, degradation, key, method)] for key in keys]
    return {metric: float(np.nanmean([row[metric] for row in rows])) for metric in rows[0]}


def targets(results, keys, strengths) -> list[tuple[str, bool, str]]:
    """The issue's targets at x4 (those whose methods ran)."""
    out = []
    m = functools.partial(mean, results, 4)
    bic_real = m("real-world", "bicubic", keys)
    zero_real, zero_clean = m("real-world", realism_name(0), keys), m("clean", realism_name(0), keys)
    out.append(("real-world, realism 0: PSNR >= bicubic + 0.3 dB", zero_real["PSNR"] >= bic_real["PSNR"] + 0.3,
                f"{zero_real['PSNR'] - bic_real['PSNR']:+.2f} dB (PSNR-Y {zero_real['PSNR-Y'] - bic_real['PSNR-Y']:+.2f})"))
    out.append(("real-world, realism 0: ST-LPIPS >= 10 % below bicubic's",
                zero_real["ST-LPIPS"] <= 0.9 * bic_real["ST-LPIPS"],
                f"{zero_real['ST-LPIPS']:.3f} vs {bic_real['ST-LPIPS']:.3f} ({zero_real['ST-LPIPS'] / bic_real['ST-LPIPS'] - 1:+.0%})"))
    baseline = "baseline (previous weights)"
    if (4, "clean", keys[0], baseline) in results:
        base_clean = m("clean", baseline, keys)
        out.append(("clean, realism 0: PSNR within 0.1 dB of the previous weights",
                    zero_clean["PSNR"] >= base_clean["PSNR"] - 0.1, f"{zero_clean['PSNR'] - base_clean['PSNR']:+.2f} dB"))
    if 1 in strengths:
        one_real, one_clean = m("real-world", realism_name(1), keys), m("clean", realism_name(1), keys)
        if (4, "real-world", keys[0], PEER_NAME) in results:
            peer = m("real-world", PEER_NAME, keys)
            out.append(("real-world, realism 1: ST-LPIPS within 20 % of Real-ESRGAN's",
                        one_real["ST-LPIPS"] <= 1.2 * peer["ST-LPIPS"],
                        f"{one_real['ST-LPIPS']:.3f} vs {peer['ST-LPIPS']:.3f} ({one_real['ST-LPIPS'] / peer['ST-LPIPS'] - 1:+.0%})"))
        out.append(("real-world, realism 1: PSNR no more than 0.3 dB below bicubic",
                    one_real["PSNR"] >= bic_real["PSNR"] - 0.3, f"{one_real['PSNR'] - bic_real['PSNR']:+.2f} dB"))
        if (4, "clean", keys[0], baseline) in results:
            base_clean = m("clean", baseline, keys)
            out.append(("clean, realism 1: ST-LPIPS >= 20 % below the previous weights'",
                        one_clean["ST-LPIPS"] <= 0.8 * base_clean["ST-LPIPS"],
                        f"{one_clean['ST-LPIPS']:.3f} vs {base_clean['ST-LPIPS']:.3f} "
                        f"({one_clean['ST-LPIPS'] / base_clean['ST-LPIPS'] - 1:+.0%})"))
            out.append(("clean, realism 1: PSNR no more than 1.2 dB below the previous weights",
                        one_clean["PSNR"] >= base_clean["PSNR"] - 1.2, f"{one_clean['PSNR'] - base_clean['PSNR']:+.2f} dB"))
    return out


def curve_png(path: Path, results, keys, strengths, names, size=(1000, 420)) -> None:
    """Per degradation at x4: PSNR (x) against ST-LPIPS (y, lower = more realistic); the realism strengths
    joined by a line, the other methods as labelled points."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    panel = width // 2
    for index, degradation in enumerate(DEGRADATIONS):
        points = {name: mean(results, 4, degradation, name, keys) for name in names}
        xs, ys = [p["PSNR"] for p in points.values()], [p["ST-LPIPS"] for p in points.values()]
        x_lo, x_hi, y_lo, y_hi = min(xs) - 0.3, max(xs) + 0.3, min(ys) - 0.02, max(ys) + 0.02
        left, top, right, bottom = index * panel + 60, 30, (index + 1) * panel - 20, height - 40

        def at(p):
            return (left + (p["PSNR"] - x_lo) / (x_hi - x_lo) * (right - left),
                    bottom - (p["ST-LPIPS"] - y_lo) / (y_hi - y_lo) * (bottom - top))

        draw.rectangle([left, top, right, bottom], outline="black")
        draw.text((left, 8), f"x4 {degradation}: PSNR (dB, right = faithful) vs ST-LPIPS (down = realistic)", fill="black")
        draw.text((left, bottom + 6), f"{x_lo:.1f}", fill="black")
        draw.text((right - 30, bottom + 6), f"{x_hi:.1f}", fill="black")
        draw.text((left - 50, top), f"{y_hi:.3f}", fill="black")
        draw.text((left - 50, bottom - 10), f"{y_lo:.3f}", fill="black")
        curve = [at(points[realism_name(s)]) for s in strengths]
        if len(curve) > 1:
            draw.line(curve, fill=(31, 119, 180), width=2)
        for name, p in points.items():
            x, y = at(p)
            colour = (31, 119, 180) if name.startswith("new, realism") else (214, 39, 40)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
            draw.text((x + 5, y - 5), name.replace("new, ", "").replace(" (previous weights)", ""), fill=colour)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def crops_png(path: Path, images, columns, rows, crop: int = 128) -> None:
    """One row per (scale, degradation, photo): a centre crop of each column's image, LR enlarged by
    nearest neighbour so its pixels show."""
    sheet = Image.new("RGB", (crop * len(columns), (crop + 14) * len(rows) + 14), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(columns):
        draw.text((c * crop + 2, 1), name.replace("new, ", "")[:22], fill="black")
    for r, row in enumerate(rows):
        scale, degradation, key = row
        y0 = 14 + r * (crop + 14)
        draw.text((2, y0), f"x{scale} {degradation}: {key.split('/')[-1][:40]}", fill="black")
        for c, name in enumerate(columns):
            image = images[row][name]
            if name == "LR":
                image = torch.nn.functional.interpolate(image, scale_factor=scale, mode="nearest")
            height, width = image.shape[-2:]
            top, left = (height - crop) // 2, (width - crop) // 2
            tile = (image[0, :, top:top + crop, left:left + crop].permute(1, 2, 0).clamp(0, 1).numpy() * 255)
            sheet.paste(Image.fromarray(tile.round().astype(np.uint8)), (c * crop, y0 + 12))
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))


def report(results, per_mp, keys, scales, names, target_rows, info: dict) -> str:
    metrics = list(next(iter(results.values())))
    lines = ["# Fidelity and realism on clean and real-world LR (held-out photos)", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["- PSNR on RGB (whole image); PSNR-Y on BT.601 luma with a `scale`-pixel border shaved; SSIM "
              "(scikit-image); ST-LPIPS with the AlexNet backbone (lower = closer); NIQE (no reference, lower = "
              "more natural; over the photos of at least 194 px a side); s/MP = seconds per output megapixel on this machine", ""]
    for scale in scales:
        for degradation in DEGRADATIONS:
            lines += [f"## x{scale}, {degradation} LR: mean over {len(keys)} photos", "",
                      "| method | " + " | ".join(metrics) + " | s/MP |", "|---" * (len(metrics) + 2) + "|"]
            for name in names:
                row = mean(results, scale, degradation, name, keys)
                lines.append(f"| {name} | " + " | ".join(f"{row[m]:.4f}" if m in ("SSIM", "ST-LPIPS") else f"{row[m]:.2f}"
                                                          for m in metrics) + f" | {per_mp[(scale, name)]:.2f} |")
            lines.append("")
    lines += ["## Per photo, x4 (PSNR / ST-LPIPS)", ""]
    for degradation in DEGRADATIONS:
        lines += [f"### {degradation}", "", "| photo | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for key in keys:
            cells = [f"{results[(4, degradation, key, n)]['PSNR']:.2f} / {results[(4, degradation, key, n)]['ST-LPIPS']:.3f}"
                     for n in names]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## The issue's targets (x4)", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {target} | {value} | {'yes' if ok else 'NO'} |" for target, ok, value in target_rows]
    return "\n".join(lines) + "\n"


def add_experiment_arguments(parser: argparse.ArgumentParser, report: str) -> None:
    """The evaluation and report flags of the adapter experiments (realism_ablation.py,
    teacher_distillation.py): held-out crop side, threads, the report in RESULTS, --overwrite."""
    parser.add_argument("--size", type=int, default=256, help="held-out centre crop side for the evaluation")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS / report))
    parser.add_argument("--overwrite", action="store_true")


def experiment_output(parser: argparse.ArgumentParser, args) -> Path:
    """--output, refused when it exists without --overwrite; sets the torch threads."""
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        parser.error(f"{output} exists; pass --overwrite or choose another --output")
    torch.set_num_threads(args.threads)
    return output


def write_report(output: Path, lines: list[str]) -> int:
    """Write an experiment's markdown report atomically and print it; the exit status 0."""
    text = "\n".join(lines) + "\n"
    atomic_write(output, lambda tmp: Path(tmp).write_text(text))
    print(text)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="default-model weights or a training checkpoint")
    parser.add_argument("--adapter", default=str(DEFAULT_ADAPTER), help="the realism LoRA ('none' to leave it out)")
    parser.add_argument("--realism", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--baseline", default=BASELINE_REV, help="git revision of the previous weights ('none': skip)")
    parser.add_argument("--scales", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--images", type=int, default=len(HELD_OUT), help="the first N held-out photos")
    parser.add_argument("--size", type=int, default=512, help="held-out centre crop side")
    parser.add_argument("--no-peer", action="store_true", help="leave Real-ESRGAN out")
    parser.add_argument("--no-niqe", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS / "realism_quality.md"))
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        parser.error(f"{output} exists; pass --overwrite or choose another --output")
    adapter = None if args.adapter == "none" else Path(args.adapter)
    if adapter is not None and not adapter.is_file():
        parser.error(f"--adapter {adapter} does not exist (train it with scripts/train_adapter.py --objective tv_lpips --export, see MODEL.md; or pass none)")
    torch.set_num_threads(args.threads)
    net = load_model(args.weights)
    baseline = None if args.baseline == "none" else load_model(str(baseline_weights(args.baseline)))
    peer = None if args.no_peer else load_realesrgan_x4plus()
    # realism 0 always: the targets and the 2- and 4-step rows are measured there
    strengths = sorted({0.0, *args.realism}) if adapter is not None else [0.0]
    methods = methods_for(net, adapter, strengths, baseline, peer)
    keys = HELD_OUT[: args.images]
    started = time.perf_counter()
    results, per_mp, images = evaluate(methods, keys, args.scales, args.size, not args.no_niqe)
    names = list(methods)
    info = {"date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
            "machine": f"{platform.machine()}, {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
                       f"torch {torch.__version__}",
            "weights": args.weights, "adapter": adapter, "baseline": f"weights/ at {args.baseline}",
            "command": f"python benchmarks/realism_quality.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip(),
            "minutes": f"{(time.perf_counter() - started) / 60:.1f}"}
    target_rows = targets(results, keys, strengths) if 4 in args.scales else []
    text = report(results, per_mp, keys, args.scales, names, target_rows, info)
    atomic_write(output, lambda tmp: Path(tmp).write_text(text))
    if 4 in args.scales:
        curve_png(output.with_name(output.stem + "_curve.png"), results, keys, strengths,
                  [n for n in names if "steps" not in n])
        columns = ["LR", "bicubic", *(realism_name(s) for s in strengths), *([PEER_NAME] if peer else []), "HR"]
        rows = [(4, degradation, key) for degradation in DEGRADATIONS for key in keys[:4]]
        crops_png(output.with_name(output.stem + "_crops.png"), images, columns, rows)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
