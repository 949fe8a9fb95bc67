"""The seeds' realism objectives compared on one budget (one command):

    python benchmarks/realism_ablation.py [--base weights/onestep_sr_default.safetensors] [--steps 150]

Each variant trains a LoRA of the same rank on the same base with scripts/train_adapter.py for the
same steps, batch, crop, learning rate, data and seed, and is then measured at full strength by
benchmarks/realism_quality.py's evaluation (x4, clean and real-world LR of the held-out photos): PSNR,
SSIM, ST-LPIPS (AlexNet; the losses use VGG) and NIQE, with the base itself as the first row. Runs live
in $ONESTEP_SR_CACHE/runs/ablation/<variant> (a rerun resumes or reuses them); writes
benchmarks/results/realism_ablation.md with the machine, the date and each variant's training time.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

import realism_quality as quality
from default_model_quality import cpu_name

from onestep_sr.adapters.lora import merged_lora
from onestep_sr.files.atomic import atomic_write
from onestep_sr.files.cache import runs_dir
from onestep_sr.models.flow_map_sr import load_model
from onestep_sr.models.pipeline import upscale
from onestep_sr.training.photos import HELD_OUT

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scripts"))
import train_adapter  # noqa: E402  (the one adapter-training entry point)

# variant -> (the seed system it stands for, train_adapter.py flags)
VARIANTS = {
    "adversarial": ("FlowMapSR (adversarial LoRA, as shipped before)",
                    ["--objective", "adversarial", "--adversarial-weight", "0.2"]),
    "adversarial_perceptual": ("FlowMapSR (adversarial LoRA + perceptual)",
                               ["--objective", "adversarial", "--adversarial-weight", "0.2", "--perceptual-weight", "1"]),
    "perceptual": ("perceptual term alone (reference)", ["--objective", "perceptual"]),
    "tv_lpips": ("FluxSR (TV-LPIPS)", ["--objective", "tv_lpips"]),
    "self_adversarial": ("TEASR (self-adversarial + timestep-aware rectification)",
                         ["--objective", "self_adversarial"]),
}


def train_variant(name: str, flags: list[str], base: str, args) -> tuple[Path, float]:
    """(the exported adapter, training minutes); an existing export is reused."""
    run = runs_dir() / "ablation" / name
    export = run / "adapter.safetensors"
    timing = run / "minutes.json"
    if export.exists() and timing.exists():
        return export, json.loads(timing.read_text())["minutes"]
    started = time.perf_counter()
    code = train_adapter.main(["--base", base, "--output-dir", str(run), "--steps", str(args.steps),
                               "--batch", str(args.batch), "--crop", str(args.crop), "--rank", str(args.rank),
                               "--lr", str(args.lr), "--real-fraction", str(args.real_fraction), "--seed", "0",
                               "--threads", str(args.threads), "--checkpoint-every", str(max(1, args.steps // 5)),
                               "--no-progress", "--export", str(export), "--overwrite", *flags])
    if code:
        raise RuntimeError(f"training variant {name} failed ({code})")
    minutes = (time.perf_counter() - started) / 60
    atomic_write(timing, lambda tmp: Path(tmp).write_text(json.dumps({"minutes": minutes})))
    return export, minutes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=str(quality.DEFAULT_WEIGHTS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--real-fraction", type=float, default=0.6)
    quality.add_experiment_arguments(parser, "realism_ablation.md")
    args = parser.parse_args(argv)
    output = quality.experiment_output(parser, args)
    net = load_model(args.base)
    methods, minutes = {"base (no adapter)": functools.partial(upscale, net)}, {}
    for name in args.variants:
        seed, flags = VARIANTS[name]
        adapter, minutes[name] = train_variant(name, flags, args.base, args)
        methods[name] = functools.partial(upscale, merged_lora(net, adapter, 1.0))
    results, _, _ = quality.evaluate(methods, HELD_OUT, [4], args.size, with_niqe=True)
    lines = ["# The realism objectives on one budget (LoRA on the default model, full strength, x4)", "",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
             f"- machine: {platform.machine()}, {cpu_name()}, {os.cpu_count()} cores, {args.threads} torch threads",
             f"- base: {args.base}; budget per variant: {args.steps} steps x batch {args.batch} x {args.crop}² crops, "
             f"LoRA rank {args.rank}, lr {args.lr}, real-world fraction {args.real_fraction}, seed 0",
             f"- evaluation: {len(HELD_OUT)} held-out photos, centre crops <= {args.size}², x4; ST-LPIPS with AlexNet",
             f"- command: python benchmarks/realism_ablation.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip(),
             ""]
    for degradation in quality.DEGRADATIONS:
        lines += [f"## {degradation} LR", "", "| variant | seed system | PSNR | SSIM | ST-LPIPS | NIQE | training min |",
                  "|---|---|---|---|---|---|---|"]
        for name in methods:
            row = quality.mean(results, 4, degradation, name, HELD_OUT)
            system = VARIANTS[name][0] if name in VARIANTS else "-"
            lines.append(f"| {name} | {system} | {row['PSNR']:.2f} | {row['SSIM']:.4f} | {row['ST-LPIPS']:.4f} | "
                         f"{row['NIQE']:.2f} | {minutes.get(name, 0):.1f} |")
        lines.append("")
    return quality.write_report(output, lines)


if __name__ == "__main__":
    sys.exit(main())
