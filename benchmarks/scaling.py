"""Suite section 4: time and peak memory of x4 upscaling vs output size, tiled beyond one tile.

Each size runs in a fresh Python process (peak RSS only ever grows within a process), doing what
the CLI does: models.pipeline.upscale on tiles blended by processing.tiling.tiled_apply, one
network evaluation per tile, in float32 and then at the CLI's default precision ("auto": bf16 where
the CPU computes it natively). The worker reports the wall and CPU time of the upscale alone, its
peak RSS (counted from after loading and a warm-up call) and the bytes of the output image, so that
the memory beyond the output buffer can be told apart.

    python benchmarks/scaling.py --weights W --side 1024 --tile 256   # one worker run, JSON out
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from timing import peak_rss_bytes, reset_peak_rss  # noqa: E402

from onestep_sr.models.flow_map_sr import load_model  # noqa: E402
from onestep_sr.models.pipeline import upscale  # noqa: E402
from onestep_sr.models.precision import resolve_precision  # noqa: E402
from onestep_sr.processing.tiling import balanced_tile, default_overlap, tile_starts, tiled_apply  # noqa: E402

SCALE = 4
# Outputs from this many pixels on are used for the exponent fit: below, fixed per-call costs dominate.
FIT_FROM_OUTPUT = 512


def tiles_processed(side: int, tile: int) -> tuple[int, int]:
    """(number of tiles, input pixels the network sees) for a side x side input, as tiled_apply cuts it."""
    if side <= tile:
        return 1, side * side
    overlap = default_overlap(SCALE)
    used = balanced_tile(side, tile, overlap)
    count = len(tile_starts(side, used, overlap))
    return count * count, count * count * used * used


def worker(weights: str, side: int, tile: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    net = load_model(weights)
    lr = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(side))
    with torch.inference_mode():
        # warm up: the first call at a shape sets up kernels (up to ~0.4 s on a CPU), which
        # would dominate the small single-tile sizes; tiled sizes reuse their tile shapes
        upscale(net, lr[..., :min(side, tile), :min(side, tile)], SCALE)
        peak_reset = reset_peak_rss()  # loading the weights peaks higher than small runs
        started, cpu_started = time.perf_counter(), time.process_time()
        out = tiled_apply(lr, lambda x: upscale(net, x, SCALE), SCALE, tile)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        peak_rss = peak_rss_bytes()
        # the CLI's default precision: bf16 where the CPU computes it natively (after the memory
        # figure, which is float32's); warmed up at the tile shape like the float32 run
        upscale(net, lr[..., :min(side, tile), :min(side, tile)], SCALE, precision="auto")
        started = time.perf_counter()
        tiled_apply(lr, lambda x: upscale(net, x, SCALE, precision="auto"), SCALE, tile)
        auto_seconds = time.perf_counter() - started
    tiles, processed = tiles_processed(side, tile)
    return {"input": side, "output": side * SCALE, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "auto_seconds": auto_seconds, "auto_precision": resolve_precision("auto", "cpu"),
            "peak_rss": peak_rss, "peak_reset": peak_reset, "output_bytes": out.numel() * out.element_size(),
            "tiles": tiles, "processed_output_pixels": processed * SCALE * SCALE}


def run_sizes(weights: Path, sides: list[int], tile: int, threads: int, log=print) -> list[dict]:
    """The worker for each input side, each in its own process."""
    rows = []
    for side in sides:
        command = [sys.executable, str(Path(__file__).resolve()), "--weights", str(weights), "--side", str(side),
                   "--tile", str(tile), "--threads", str(threads)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"scaling worker for {side}x{side} failed:\n{result.stderr[-3000:]}")
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        log(f"  scaling: {side * SCALE}^2 output in {rows[-1]['seconds']:.1f} s, "
            f"peak RSS {rows[-1]['peak_rss'] / 2**20:.0f} MiB")
    return rows


def output_pixels(row: dict) -> int:
    return row["output"] ** 2


def fitted_exponent(rows: list[dict], pixels=output_pixels, seconds: str = "seconds") -> float:
    """Slope of log(row[seconds]) against log(pixels(row)) over outputs >= FIT_FROM_OUTPUT."""
    used = [row for row in rows if row["output"] >= FIT_FROM_OUTPUT]
    if len(used) < 2:
        return float("nan")
    x = np.log(np.array([pixels(row) for row in used], dtype=np.float64))
    return float(np.polyfit(x, np.log([row[seconds] for row in used]), 1)[0])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--side", type=int, required=True, help="input side in pixels (output = 4 x side)")
    parser.add_argument("--tile", type=int, default=256, help="tile side in input pixels")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    print(json.dumps(worker(args.weights, args.side, args.tile, args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
