"""`onestep-sr upscale`: the default SR model on files and folders, no ComfyUI needed.

Under `accelerate launch --num_processes N` (or torchrun) the files are shared out over the processes, each on
its own device (CUDA GPU LOCAL_RANK), the first one printing the progress and every output.

Only argparse is imported up front, so `--help` and usage errors return at once; torch and the
model are imported once the arguments are known to be good.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .files.images import IMAGE_SUFFIXES
from .models.precision import DEVICES, PRECISIONS
from .processing.overlap import default_overlap, min_tile as smallest_tile

DEFAULT_MODEL = Path(__file__).resolve().parent / "weights" / "onestep_sr_default.safetensors"
REALISM_ADAPTER = Path(__file__).resolve().parent / "weights" / "loras" / "onestep_sr_realism.safetensors"
# Peak bytes per input pixel of one default-model call (measured on CPU, with headroom).
BYTES_PER_INPUT_PIXEL = {4: 40_000, 8: 160_000}


def find_images(inputs: list[str]) -> list[Path]:
    """The image files named by `inputs` (files, or folders searched one level deep), each once."""
    from .files.images import image_files

    found = {}
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            files = image_files(path)
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(f"input '{name}' does not exist; give image files or folders")
        for file in files:
            found.setdefault(file.resolve(), file)
    return list(found.values())


def output_paths(sources: list[Path], out: Path, scale: int) -> list[Path]:
    """Where each source is written: `out` itself when it names a PNG file (one source), else
    out/<stem>_x<scale>.png. Raises ValueError when sources would share an output or replace an input."""
    if out.suffix.lower() in IMAGE_SUFFIXES:
        if out.suffix.lower() != ".png":
            raise ValueError(f"-o {out}: outputs are PNG files; name a .png file (for one input) or a folder")
        if len(sources) != 1:
            raise ValueError(f"-o {out} names one PNG file, but {len(sources)} images were found in the inputs; "
                             "give a folder")
        targets = [out]
    else:
        targets = [out / f"{source.stem}_x{scale}.png" for source in sources]
    by_target = {}
    for source, target in zip(sources, targets):
        by_target.setdefault(target.resolve(), []).append(source)
    shared = [(target, names) for target, names in by_target.items() if len(names) > 1]
    if shared:
        target, names = shared[0]
        raise ValueError(f"inputs {' and '.join(map(str, names))} would all be written to "
                         f"{targets[sources.index(names[0])]} ({len(shared)} such output name(s)); rename them "
                         "or upscale them into different -o folders")
    inputs = {source.resolve() for source in sources} & set(by_target)
    if inputs:
        raise ValueError(f"the output {sorted(inputs)[0]} is also an input; choose another -o")
    return targets


def min_tile(scale: int) -> int:
    """The smallest --tile (input pixels) at `scale`: neighbouring tiles blend over the default overlap."""
    return smallest_tile(default_overlap(scale))


def upscale_file(net, image, scale: int, steps: int, guidance: float, tile: int, seed: int, precision: str = "fp32"):
    """[1, C, s*H, s*W] of image [1, C, H, W] (kept in RAM; the network runs on its weights' device), in
    tiles of `tile` input pixels (0: from the free memory of that device), halved on out-of-memory;
    refused before any work when the output cannot fit in RAM."""
    from .models import pipeline
    from .processing.tiling import auto_tile_size, check_output_fits, tiled_apply

    _, channels, height, width = image.shape
    check_output_fits(1, scale * height, scale * width, channels, f"x{scale}",
                      "crop or downscale the image, or use --scale 4")
    run = lambda x: pipeline.upscale(net, x, scale, steps=steps, guidance=guidance, seed=seed, precision=precision)
    if tile == 0:
        tile = auto_tile_size(BYTES_PER_INPUT_PIXEL.get(scale, BYTES_PER_INPUT_PIXEL[8]), next(net.parameters()).device)
    return tiled_apply(image, run, scale, tile, min_tile=min_tile(scale))


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onestep-sr", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("upscale", help="upscale image files or folders with a OneStep SR model")
    up.add_argument("inputs", nargs="+", help="image files (PNG, JPEG, WebP, BMP, TIFF) or folders of them")
    up.add_argument("-o", "--output", required=True, help="output folder (or a .png path for one input)")
    up.add_argument("--scale", type=int, choices=(4, 8), default=4, help="upscale factor")
    up.add_argument("--steps", type=int, default=1, help="network evaluations (1 = one step)")
    up.add_argument("--guidance", type=float, default=1.0, help="guidance weight (1 = off)")
    up.add_argument("--tile", type=int, default=0, help="tile size in input pixels (0 = from free memory)")
    up.add_argument("--seed", type=int, default=0, help="seed for stochastic sampling")
    up.add_argument("--realism", type=float, default=0.0,
                    help="0 (default) = the faithful output; up to 1 = the shipped realism adapter at that strength "
                         "(more natural texture, a little less fidelity)")
    up.add_argument("--model", default=str(DEFAULT_MODEL), help="a OneStep SR .safetensors model")
    up.add_argument("--device", choices=DEVICES, default="auto",
                    help="where the network runs; auto: a CUDA GPU, else Apple's MPS, else the CPU")
    up.add_argument("--precision", choices=PRECISIONS, default="auto",
                    help="auto: half precision where the device computes it natively (bf16 on recent NVIDIA GPUs "
                         "and CPUs, fp16 on older GPUs and Apple's; twice as fast, same PSNR), else fp32")
    up.add_argument("--overwrite", action="store_true", help="replace output files that exist")
    return parser


def check_arguments(cli: argparse.ArgumentParser, args) -> None:
    """Usage errors for numbers argparse takes but the upscale cannot use."""
    if args.steps < 1:
        cli.error(f"--steps must be at least 1, got {args.steps}")
    if args.tile != 0 and args.tile < min_tile(args.scale):
        cli.error(f"--tile must be 0 (automatic) or at least {min_tile(args.scale)} input pixels at --scale "
                  f"{args.scale} (neighbouring tiles overlap by half that), got {args.tile}")
    if not (math.isfinite(args.guidance) and args.guidance >= 0):
        cli.error(f"--guidance must be a finite number >= 0 (1 = off), got {args.guidance}")
    if not 0 <= args.seed < 2 ** 64:
        cli.error(f"--seed must lie in [0, 2^64 - 1], got {args.seed}")
    if not 0.0 <= args.realism <= 1.0:
        cli.error(f"--realism must lie in [0, 1] (0 = faithful, 1 = the realism adapter at full strength), got {args.realism}")


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    check_arguments(cli, args)
    try:
        sources = find_images(args.inputs)
    except FileNotFoundError as error:
        cli.error(str(error))
    if not sources:
        cli.error(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in the inputs")
    out = Path(args.output)
    try:
        targets = output_paths(sources, out, args.scale)
    except ValueError as error:
        cli.error(str(error))

    import torch
    from safetensors import SafetensorError

    from .models.flow_map_sr import load_model
    from .models.precision import resolve_device

    rank, world, local_rank = launched_process()
    try:
        device = resolve_device(args.device, local_rank)
    except ValueError as error:
        cli.error(f"--device {args.device}: {error}")
    if world > 1:  # gloo: the processes exchange only small reports, on the CPU, whatever their devices
        torch.distributed.init_process_group("gloo")
    try:
        net = load_model(args.model)
    except (OSError, ValueError, SafetensorError) as error:
        cli.error(f"--model {args.model} cannot be loaded ({error}); give a OneStep SR .safetensors "
                  "model, or leave --model out for the shipped default")
    if args.realism > 0:
        from .adapters.lora import merged_lora

        try:
            net = merged_lora(net, REALISM_ADAPTER, args.realism)
        except ValueError as error:
            cli.error(f"--realism needs the realism adapter of the shipped default model ({error}); leave --model "
                      "out, or --realism at 0")
    net = net.to(device)
    pairs = list(zip(sources, targets))
    try:
        failed = upscale_all(pairs[rank::world], len(pairs), world, net, args, reports_of_round(world), rank == 0)
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()
    if rank == 0:
        written = len(sources) - failed
        where = targets[0] if out.suffix.lower() in IMAGE_SUFFIXES else out
        print(f"wrote {written} image{'' if written == 1 else 's'} to {where}"
              + (f" ({world} processes)" if world > 1 else "")
              + (f"; skipped {failed} (named above)" if failed else ""))
    return 1 if failed else 0


def launched_process() -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process under a launcher of several (accelerate launch,
    torchrun: their RANK, WORLD_SIZE, LOCAL_RANK), else (0, 1, 0)."""
    import os

    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def reports_of_round(world: int):
    """gather(report) -> every process's report of this round. A launched run's processes meet once per image,
    so the first one prints one exact progress line and every message; the price: a round lasts as long as
    its slowest image."""
    if world == 1:
        return lambda report: [report]
    import torch.distributed as dist

    def gather(report):
        reports = [None] * world
        dist.all_gather_object(reports, report)
        return reports
    return gather


def upscale_one(net, source: Path, target: Path, args) -> str | None:
    """Upscale `source` into `target`; None when written, else why it was skipped (the error names the fix)."""
    from .files.images import load_image, write_png
    from .processing.tiling import TileOutOfMemoryError, is_out_of_memory

    try:
        if target.exists() and not args.overwrite:
            raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
        image = load_image(source)
        result = upscale_file(net, image.pixels, args.scale, args.steps, args.guidance, args.tile, args.seed,
                              args.precision)
        write_png(result, target, args.overwrite, image.icc_profile)
        return None
    except (OSError, ValueError, RuntimeError, MemoryError) as error:
        if isinstance(error, RuntimeError) and not (isinstance(error, TileOutOfMemoryError)
                                                    or is_out_of_memory(error)):
            raise
        if isinstance(error, (RuntimeError, MemoryError)):
            return (f"out of memory ({error}); use a smaller --tile (at least {min_tile(args.scale)}), "
                    "free memory, or crop the image")
        return str(error)


def upscale_all(pairs: list[tuple[Path, Path]], total: int, world: int, net, args, gather, shows: bool) -> int:
    """Upscale this process's (source, target) pairs, round by round with the `world` processes (`gather`);
    the process that `shows` prints the one progress bar over all `total` images, each output and each
    skip. Returns how many images all processes skipped."""
    from tqdm.auto import tqdm

    failed = 0
    with tqdm(total=total, desc="upscaling", unit="image", disable=not shows) as bar:
        for index in range(-(-total // world)):  # every process meets the others as often
            report = None
            if index < len(pairs):
                source, target = pairs[index]
                report = (str(source), str(target), upscale_one(net, source, target, args))
            done = [report for report in gather(report) if report is not None]
            for source, target, error in done:
                failed += error is not None
                if shows:
                    tqdm.write(f"{source} -> {target}" if error is None else f"skipped {source}: {error}",
                               file=sys.stdout if error is None else sys.stderr)
            bar.update(len(done))
    return failed


if __name__ == "__main__":
    sys.exit(main())
