"""The GPU section of BENCHMARKS.md, measured on one CUDA GPU (scripts/gpu_check.sh runs it).

- the one-click node (the extension's `OneStepSR_Upscale` function, ComfyUI's device and dtype choices, automatic
  tiles) on the default model at x4 to about 1, 4 and 16 output megapixels: seconds per output MP and peak VRAM
  (torch's max_memory_allocated over the call);
- node / bare: the node's time over the pure pipeline (`models.pipeline.upscale`) on the same weights, untiled;
- the share of the GPU's bf16 peak that one network evaluation of a tiny native model (the test suite's tiny
  SD3 MMDiT, bf16 weights, a batch of 64x64 latents) reaches: its FLOPs (torch's FlopCounterMode) over its time,
  against a dense 8192^3 bf16 matmul measured here and, for GPUs in SPEC_BF16_TFLOPS, the datasheet figure.

Times: CUDA-synchronised wall clock, best of REPEATS after one warm-up. The section goes between GPU_START and
GPU_END in BENCHMARKS.md (appended when absent; run_all.py keeps it); the figures also go to
benchmarks/results/gpu.json. Without a CUDA GPU it says what it would measure and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
GPU_START, GPU_END = "<!-- gpu section: benchmarks/gpu.py -->", "<!-- end of gpu section -->"
# LR side at x4 -> output megapixels: 1024^2 = 1.05, 2048^2 = 4.19, 4096^2 = 16.8
LR_SIDES = {1: 256, 4: 512, 16: 1024}
SCALE = 4
REPEATS = 3
MATMUL_SIDE = 8192
TINY_BATCH, TINY_LATENT = 8, 64
# Dense bf16 tensor-core peaks (no sparsity), TFLOPS, from NVIDIA's datasheets (SXM parts).
SPEC_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}
WHAT = ("the one-click node on the default model at x4 to 1, 4 and 16 output MP (s per output MP, peak VRAM), "
        "node / bare pipeline, and the share of the bf16 peak one evaluation of a tiny SD3 model reaches")


def best_seconds(fn, repeats: int = REPEATS):
    """(best CUDA-synchronised seconds of `repeats` calls after one warm-up, peak bytes allocated, last result)."""
    result = fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best, torch.cuda.max_memory_allocated(), result


def node_rows(host) -> list[dict]:
    from onestep_sr.cli import DEFAULT_MODEL
    from onestep_sr.models import pipeline

    bridge = host.module("bridge.default_model")
    node = host.module("bridge.upscale").upscale
    model, vae = bridge.load_default_model(str(DEFAULT_MODEL))
    rows = []
    for megapixels, side in LR_SIDES.items():
        image = torch.rand(1, side, side, 3, generator=torch.Generator().manual_seed(side))
        with torch.inference_mode():
            node_s, peak, _ = best_seconds(lambda: node(
                model=model, vae=vae, image=image, scale_by=float(SCALE), steps=1, family="auto", start_mode="lr",
                t_start=1.0, shift=1.0, gamma=0.0, bridge_scale=1.0, guidance=1.0, seed=0, tile_size=0))
            net = bridge.direct_network(model)  # the weights the node sampled with, loaded by ComfyUI
            bare_s, bare_peak, _ = best_seconds(lambda: pipeline.upscale(net, image.movedim(-1, 1), SCALE))
        output_mp = (side * SCALE) ** 2 / 1e6
        rows.append({"output_side": side * SCALE, "output_mp": output_mp, "node_s": node_s,
                     "node_s_per_mp": node_s / output_mp, "node_peak_vram_mib": peak / 2 ** 20, "bare_s": bare_s,
                     "bare_peak_vram_mib": bare_peak / 2 ** 20, "node_over_bare": node_s / bare_s,
                     "weight_dtype": str(model.model.get_dtype()).removeprefix("torch.")})
    return rows


def matmul_tflops() -> float:
    a = torch.randn(MATMUL_SIDE, MATMUL_SIDE, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(MATMUL_SIDE, MATMUL_SIDE, device="cuda", dtype=torch.bfloat16)
    seconds, _, _ = best_seconds(lambda: a @ b, repeats=10)
    return 2 * MATMUL_SIDE ** 3 / seconds / 1e12


def tiny_model_share() -> dict:
    import comfy.model_management
    from torch.utils.flop_counter import FlopCounterMode

    from onestep_sr.testing import tiny_models

    patcher = tiny_models.build_model("sd3", torch.bfloat16)
    comfy.model_management.load_models_gpu([patcher])
    network = patcher.model.diffusion_model
    dims = tiny_models.FAMILIES["sd3"]
    cuda = {"device": "cuda", "dtype": torch.bfloat16}
    x = torch.randn(TINY_BATCH, dims["latent_channels"], TINY_LATENT, TINY_LATENT, **cuda)
    context = torch.randn(TINY_BATCH, tiny_models.CONTEXT_TOKENS, dims["context_dim"], **cuda)
    pooled = torch.randn(TINY_BATCH, dims["pooled_dim"], **cuda)
    timesteps = torch.full((TINY_BATCH,), 500.0, **cuda)
    evaluate = lambda: network(x, timesteps, context=context, y=pooled)  # noqa: E731
    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            evaluate()
        seconds, _, _ = best_seconds(evaluate, repeats=20)
    name = torch.cuda.get_device_name()
    spec = next((tflops for key, tflops in SPEC_BF16_TFLOPS.items() if key in name), None)
    achieved = counter.get_total_flops() / seconds / 1e12
    measured_peak = matmul_tflops()
    return {"flops": counter.get_total_flops(), "seconds": seconds, "achieved_tflops": achieved,
            "matmul_tflops": measured_peak, "share_of_matmul": achieved / measured_peak,
            "spec_tflops": spec, "share_of_spec": None if spec is None else achieved / spec}


def section(info: dict, rows: list[dict], tiny: dict) -> str:
    lines = [GPU_START, "## GPU (CUDA)", "",
             f"Produced by `bash scripts/gpu_check.sh` (`benchmarks/gpu.py`) on {info['date']}: {info['gpu']}, "
             f"torch {info['torch']}, CUDA {info['cuda']}, ComfyUI host {info['comfyui']}. The extension's one-click "
             f"function with ComfyUI's own device, weight dtype and automatic tiles, x4, 1 step; the bare pipeline on "
             f"the same weights untiled. CUDA-synchronised wall clock, best of {REPEATS} after one warm-up; peak VRAM "
             "is torch's max_memory_allocated over the call.",
             "", "| output | weights | node s | s per output MP | node peak VRAM MiB | bare pipeline s | node / bare |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['output_side']}^2 ({row['output_mp']:.1f} MP) | {row['weight_dtype']} | "
                     f"{row['node_s']:.3f} | {row['node_s_per_mp']:.3f} | {row['node_peak_vram_mib']:.0f} | "
                     f"{row['bare_s']:.3f} | {row['node_over_bare']:.3f} |")
    spec = ("" if tiny["spec_tflops"] is None else
            f", {100 * tiny['share_of_spec']:.2f} % of the datasheet's {tiny['spec_tflops']:.0f} TFLOPS")
    lines += ["", f"Tiny SD3 MMDiT, one evaluation of a batch of {TINY_BATCH} latents {TINY_LATENT}^2 in bf16: "
                  f"{tiny['flops'] / 1e9:.2f} GFLOP in {1e3 * tiny['seconds']:.3f} ms = {tiny['achieved_tflops']:.2f} "
                  f"TFLOPS, {100 * tiny['share_of_matmul']:.2f} % of the {tiny['matmul_tflops']:.0f} TFLOPS a "
                  f"{MATMUL_SIDE}^3 bf16 matmul reaches here{spec}.", GPU_END, ""]
    return "\n".join(lines)


def kept_section(report: Path) -> str:
    """The GPU section `report` holds ("" when none): run_all.py keeps it when it rewrites the report."""
    old = report.read_text() if report.exists() else ""
    if GPU_START not in old or GPU_END not in old:
        return ""
    return old[old.index(GPU_START):old.index(GPU_END) + len(GPU_END)] + "\n"


def write_section(report: Path, text: str) -> None:
    """`text` in place of the GPU section of `report`, or appended when it has none."""
    old = report.read_text() if report.exists() else ""
    if GPU_START in old and GPU_END in old:
        head, rest = old.split(GPU_START, 1)
        new = head + text.rstrip("\n") + rest.split(GPU_END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    report.write_text(new)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=str(REPO / "BENCHMARKS.md"), help="the report to write the section into")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"benchmarks/gpu.py: no CUDA GPU visible to torch; skipped: {WHAT}. {args.output} left as it is.")
        return 0
    os.environ["ONESTEP_SR_HOST_DEVICE"] = "cuda"
    from onestep_sr.testing import comfy_host

    with tempfile.TemporaryDirectory(prefix="onestep-sr-gpu-") as base:
        host = comfy_host.InProcessHost(comfy_host.host_dir(), comfy_host.prepare_base_dir(base))
        import comfy.utils

        comfy.utils.PROGRESS_BAR_ENABLED = False
        rows = node_rows(host)
        tiny = tiny_model_share()
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "gpu": torch.cuda.get_device_name(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "comfyui": comfy_host.host_dir().name}
    results = REPO / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "gpu.json").write_text(json.dumps({"machine": info, "node": rows, "tiny_model": tiny}, indent=1) + "\n")
    write_section(Path(args.output), section(info, rows, tiny))
    for row in rows:
        print(f"{row['output_mp']:.1f} MP: {row['node_s_per_mp']:.3f} s/MP, {row['node_peak_vram_mib']:.0f} MiB, "
              f"node/bare {row['node_over_bare']:.3f}")
    print(f"tiny SD3 evaluation: {100 * tiny['share_of_matmul']:.2f} % of the measured bf16 matmul peak; "
          f"section written into {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
