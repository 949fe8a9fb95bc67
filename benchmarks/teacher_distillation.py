"""Is the realism adapter's gap the training signal? Distil it from Real-ESRGAN x4plus (one command):

    python benchmarks/teacher_distillation.py [--pool 360] [--steps 500] [--hr-mix 0 1]

Hypothesis: under the real-world chain one LR image has many plausible HR images, so L1 and LPIPS
against HR pull the adapter towards their blurry mean; the peer's output is one sharp image per LR
image, so a student regressed onto it could learn texture that HR targets cannot teach.

1. The pool: random 384² HR crops of the training photos (photos.CropSampler, seeded), their
   real-world LR (training/degradations.py) and Real-ESRGAN's output on that LR (bf16 autocast), a
   48 px HR margin cut away so no tile edge of the peer enters; cached in
   $ONESTEP_SR_CACHE/runs/distillation/pool_<N>.safetensors.
2. One LoRA per `--hr-mix` a, with the shipped realism adapter's objective and settings (MODEL.md):
   batches of 8 crops of 96², 6 from the pool with target (1 - a)·teacher + a·HR, 2 clean bicubic
   (training/sr_data.py); a = 1 is the control (the same pool, HR targets).
3. Measured at full strength on the held-out photos (realism_quality.evaluate, ×4, clean and
   real-world) and on every 12th pool patch against HR and against the teacher.

Writes benchmarks/results/teacher_distillation.md with the machine and the date.
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

import numpy as np
import torch

import realism_quality as quality
from default_model_quality import cpu_name, psnr
from peers import load_realesrgan_x4plus, realesrgan_upscale

from onestep_sr.adapters.lora import DEFAULT_TARGETS, LoraSpec, merged_lora
from onestep_sr.files.atomic import atomic_write
from onestep_sr.files.cache import runs_dir
from onestep_sr.files.tensors import load_tensors, save_tensors
from onestep_sr.models.flow_map_sr import load_model
from onestep_sr.models.pipeline import lr_source, upscale
from onestep_sr.processing.resample import bicubic_upscale
from onestep_sr.training.degradations import realistic_downscale
from onestep_sr.training.lora_training import LoRATrainer
from onestep_sr.training.objectives import make_objective
from onestep_sr.training.photos import HELD_OUT, CropSampler
from onestep_sr.training.sr_data import sr_batches
from onestep_sr.training.trainer import TrainConfig

SCALE = 4  # the peer's own factor
POOL_HR, POOL_MARGIN, POOL_SEED, POOL_CHUNK = 384, 48, 1234, 8
BATCH, CROP, TEACHER_SAMPLES = 8, 96, 6
# the shipped realism adapter's recipe (MODEL.md, "The realism adapter")
RECIPE = {"perceptual_weight": 10.0, "perceptual_samples": 8, "perceptual_crop": 96}
RANK, LR, EMA_DECAY = 32, 5e-4, 0.98
POOL_PROBE_EVERY = 12


def build_pool(teacher, sampler: CropSampler, count: int, seed: int = POOL_SEED, hr_size: int = POOL_HR,
               margin: int = POOL_MARGIN) -> dict[str, torch.Tensor]:
    """{"hr", "teacher", "lr"} float16, `count` patches: seeded HR crops, their real-world LR and
    teacher(LR) ([B, 3, h, w] -> [B, 3, 4h, 4w] in [0, 1]), each with `margin` HR pixels (margin / 4
    LR pixels) cut from every side."""
    if margin % SCALE or hr_size % SCALE or hr_size <= 2 * margin:
        raise ValueError(f"need a margin and HR size that are multiples of {SCALE}, the margin under half "
                         f"the size; got {margin} and {hr_size}")
    rng = np.random.default_rng(seed)
    parts = {"hr": [], "teacher": [], "lr": []}
    inner, lr_margin = slice(margin, hr_size - margin), slice(margin // SCALE, (hr_size - margin) // SCALE)
    for start in range(0, count, POOL_CHUNK):
        hr = sampler.sample(min(POOL_CHUNK, count - start), hr_size, rng)
        lr = realistic_downscale(hr, SCALE, rng)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = teacher(lr).float().clamp(0, 1)
        parts["hr"].append(hr[..., inner, inner])
        parts["teacher"].append(out[..., inner, inner])
        parts["lr"].append(lr[..., lr_margin, lr_margin])
    return {key: torch.cat(value).half() for key, value in parts.items()}


def pool_window(pool: dict, index: int, top: int, left: int, crop: int, turns: int, flip: bool):
    """(HR, teacher, LR) of patch `index` at HR offset (top, left), multiples of 4, side `crop`,
    rotated `turns` quarter turns and mirrored when `flip`, all three the same way."""
    if top % SCALE or left % SCALE or crop % SCALE:
        raise ValueError(f"window offsets and side must be multiples of {SCALE}; got {top}, {left}, {crop}")
    hr_window = (slice(top, top + crop), slice(left, left + crop))
    lr_window = (slice(top // SCALE, (top + crop) // SCALE), slice(left // SCALE, (left + crop) // SCALE))
    images = (pool["hr"][index][:, hr_window[0], hr_window[1]], pool["teacher"][index][:, hr_window[0], hr_window[1]],
              pool["lr"][index][:, lr_window[0], lr_window[1]])
    images = [torch.rot90(image.float(), turns, dims=(-2, -1)) for image in images]
    return tuple(image.flip(-1) if flip else image for image in images)


def distillation_batches(pool: dict, hr_mix: float, clean, source_noise: float = 0.0,
                         teacher_samples: int = TEACHER_SAMPLES, crop: int = CROP):
    """batches(generator) -> {"x0", "x1", "cond"} in [-1, 1] (training/sr_data.py's contract):
    `teacher_samples` pool windows with target (1 - hr_mix)·teacher + hr_mix·HR, then the samples of
    `clean` (sr_batches of the rest of the batch), in a random order."""
    count, side = pool["hr"].shape[0], pool["hr"].shape[-1]

    def draw(generator: torch.Generator) -> dict:
        extra = clean(generator)
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        targets, lows = [], []
        for _ in range(teacher_samples):
            index = int(rng.integers(count))
            top, left = (int(v) * SCALE for v in rng.integers(0, (side - crop) // SCALE + 1, 2))
            hr, teacher, lr = pool_window(pool, index, top, left, crop, int(rng.integers(4)), bool(rng.random() < 0.5))
            targets.append((1 - hr_mix) * teacher + hr_mix * hr)
            lows.append(lr)
        upsampled = bicubic_upscale(torch.stack(lows), SCALE) * 2 - 1
        source = lr_source(upsampled, source_noise, torch.Generator().manual_seed(int(rng.integers(2**62))))
        order = torch.from_numpy(rng.permutation(teacher_samples + extra["x0"].shape[0]))
        return {"x0": torch.cat([torch.stack(targets) * 2 - 1, extra["x0"]])[order],
                "x1": torch.cat([source, extra["x1"]])[order], "cond": torch.cat([upsampled, extra["cond"]])[order]}

    return draw


def train_student(base: str, pool: dict, hr_mix: float, steps: int, run: Path) -> tuple[Path, float]:
    """(the exported EMA adapter, training minutes); an existing export is reused, a run resumes."""
    export, timing = run / "adapter.safetensors", run / "minutes.json"
    if export.exists() and timing.exists():
        return export, json.loads(timing.read_text())["minutes"]
    net = load_model(base).train()
    clean = sr_batches(CropSampler(), BATCH - TEACHER_SAMPLES, CROP, 0.0, net.source_noise)  # x4 and x8, as shipped
    config = TrainConfig(output_dir=str(run), steps=steps, seed=0, lr=LR, ema_decay=EMA_DECAY,
                         checkpoint_every=100, progress=False)
    started = time.perf_counter()
    trainer = LoRATrainer(net, LoraSpec(rank=RANK, target_modules=DEFAULT_TARGETS),
                          make_objective("tv_lpips", **RECIPE), distillation_batches(pool, hr_mix, clean, net.source_noise),
                          config, metadata={"experiment": "benchmarks/teacher_distillation.py", "hr_mix": hr_mix})
    trainer.train()
    minutes = (time.perf_counter() - started) / 60
    trainer.export(export, overwrite=True)
    atomic_write(timing, lambda tmp: Path(tmp).write_text(json.dumps({"minutes": minutes})))
    return export, minutes


def pool_scores(method, pool: dict) -> dict:
    """PSNR and ST-LPIPS (AlexNet) against HR, ST-LPIPS against the teacher, on every 12th patch."""
    picks = range(0, pool["hr"].shape[0], POOL_PROBE_EVERY)
    scores = {"PSNR": [], "ST-LPIPS": [], "ST-LPIPS to teacher": []}
    for index in picks:
        hr, teacher, lr = (pool[key][index:index + 1].float() for key in ("hr", "teacher", "lr"))
        with torch.no_grad():
            sr = method(lr, SCALE).clamp(0, 1)
        scores["PSNR"].append(psnr(sr, hr))
        scores["ST-LPIPS"].append(quality.lpips_alex(sr, hr))
        scores["ST-LPIPS to teacher"].append(quality.lpips_alex(sr, teacher))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=str(quality.DEFAULT_WEIGHTS))
    parser.add_argument("--pool", type=int, default=360, help="patches in the teacher pool")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--hr-mix", type=float, nargs="+", default=[0.0, 1.0],
                        help="target = (1 - a) teacher + a HR, one student per value in [0, 1]")
    quality.add_experiment_arguments(parser, "teacher_distillation.md")
    args = parser.parse_args(argv)
    bad = [a for a in args.hr_mix if not 0 <= a <= 1]
    if bad or args.pool < 1:
        parser.error(f"--hr-mix values must lie in [0, 1] (got {bad}) and --pool be at least 1")
    output = quality.experiment_output(parser, args)
    root = runs_dir() / "distillation"
    pool_path = root / f"pool_{args.pool}.safetensors"
    teacher = load_realesrgan_x4plus()
    if pool_path.exists():
        pool, pool_info = load_tensors(pool_path)
    else:
        started = time.perf_counter()
        pool = build_pool(teacher, CropSampler(), args.pool)
        pool_info = {"seed": POOL_SEED, "minutes": (time.perf_counter() - started) / 60}
        save_tensors(pool_path, pool, pool_info)
    net = load_model(args.base)
    methods = {"base (no adapter)": functools.partial(upscale, net)}
    minutes = {}
    for hr_mix in args.hr_mix:
        name = f"student, HR mix {hr_mix:g}" + (" (control: HR targets)" if hr_mix == 1 else "")
        adapter, minutes[name] = train_student(args.base, pool, hr_mix, args.steps, root / f"hr_mix_{hr_mix:g}")
        methods[name] = functools.partial(upscale, merged_lora(net, adapter, 1.0))
    results, _, _ = quality.evaluate(methods, HELD_OUT, [SCALE], args.size, with_niqe=False)
    on_pool = {"bicubic": pool_scores(bicubic_upscale, pool),
               "Real-ESRGAN x4plus (the teacher)": pool_scores(functools.partial(realesrgan_upscale, teacher), pool),
               **{name: pool_scores(method, pool) for name, method in methods.items()}}
    lines = ["# Distilling the realism adapter from Real-ESRGAN x4plus (LoRA on the default model, x4)", "",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
             f"- machine: {platform.machine()}, {cpu_name()}, {os.cpu_count()} cores, {args.threads} torch threads",
             f"- base: {args.base}; pool: {args.pool} real-world patches of {POOL_HR - 2 * POOL_MARGIN}² HR "
             f"(seed {POOL_SEED}, built in {pool_info['minutes']:.1f} min); per student {args.steps} steps x "
             f"{BATCH} crops of {CROP}² ({TEACHER_SAMPLES} pool, {BATCH - TEACHER_SAMPLES} clean), tv_lpips {RECIPE}, "
             f"rank {RANK}, lr {LR}, EMA {EMA_DECAY}, seed 0",
             f"- evaluation: {len(HELD_OUT)} held-out photos, centre crops <= {args.size}², and every "
             f"{POOL_PROBE_EVERY}th pool patch (training photos); PSNR on RGB, ST-LPIPS with AlexNet",
             f"- command: python benchmarks/teacher_distillation.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip(),
             "", "## Held-out photos, full strength", "",
             "| adapter | clean PSNR | clean ST-LPIPS | real-world PSNR | real-world ST-LPIPS | training min |",
             "|---|---|---|---|---|---|"]
    for name in methods:
        clean, real = (quality.mean(results, SCALE, degradation, name, HELD_OUT) for degradation in ("clean", "real-world"))
        lines.append(f"| {name} | {clean['PSNR']:.2f} | {clean['ST-LPIPS']:.4f} | {real['PSNR']:.2f} | "
                     f"{real['ST-LPIPS']:.4f} | {minutes.get(name, 0):.1f} |")
    lines += ["", "## The pool (real-world LR of training photos)", "",
              "ST-LPIPS to the teacher is against the pool's stored target (bf16, computed on the whole "
              "patch before its margin was cut); the teacher's own row is that difference.", "",
              "| method | PSNR | ST-LPIPS to HR | ST-LPIPS to the teacher |", "|---|---|---|---|"]
    lines += [f"| {name} | {row['PSNR']:.2f} | {row['ST-LPIPS']:.4f} | {row['ST-LPIPS to teacher']:.4f} |"
              for name, row in on_pool.items()]
    return quality.write_report(output, lines)


if __name__ == "__main__":
    sys.exit(main())
