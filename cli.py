"""`onestep-sr upscale`: the default SR model on files and folders, no ComfyUI needed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from safetensors import SafetensorError
from tqdm.auto import tqdm

from .models.flow_map_sr import load_model
from .models.pipeline import upscale
from .models.precision import PRECISIONS
from .processing.tiling import auto_tile_size, tiled_apply
from .training.checkpoint import atomic_write

DEFAULT_MODEL = Path(__file__).resolve().parent / "weights" / "onestep_sr_default.safetensors"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
# Peak bytes per input pixel of one default-model call (measured on CPU, with headroom).
BYTES_PER_INPUT_PIXEL = {4: 40_000, 8: 160_000}


def find_images(inputs: list[str]) -> list[Path]:
    """The image files named by `inputs` (files, or folders searched one level deep)."""
    found = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"input '{name}' does not exist; give image files or folders")
    return found


def read_image(path: Path) -> torch.Tensor:
    """[1, C, H, W] float in [0, 1]; C = 1 (grey), 3 (RGB) or 4 (RGBA)."""
    with Image.open(path) as image:
        image.load()
        if image.mode in ("LA", "PA", "P", "RGBa") or "transparency" in image.info:
            image = image.convert("RGBA")
        elif image.mode not in ("L", "RGB", "RGBA"):
            image = image.convert("L" if image.mode in ("I", "I;16", "F", "1") else "RGB")
        array = np.asarray(image, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def write_png(image: torch.Tensor, path: Path, overwrite: bool) -> None:
    """Write [1, C, H, W] in [0, 1] as PNG via a temporary file, never clobbering unless asked."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    array = (image[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[array.shape[-1]]
    pil = Image.fromarray(array[..., 0] if mode == "L" else array, mode=mode)
    atomic_write(path, lambda tmp: pil.save(tmp, format="PNG"))


def output_path(source: Path, out: Path, scale: int, single: bool) -> Path:
    if single and out.suffix.lower() == ".png":
        return out
    return out / f"{source.stem}_x{scale}.png"


def upscale_file(net, source: Path, scale: int, steps: int, guidance: float, tile: int, seed: int,
                 precision: str = "fp32") -> torch.Tensor:
    image = read_image(source)
    run = lambda x: upscale(net, x, scale, steps=steps, guidance=guidance, seed=seed, precision=precision)
    if tile == 0:
        tile = auto_tile_size(BYTES_PER_INPUT_PIXEL.get(scale, BYTES_PER_INPUT_PIXEL[8]))
    if max(image.shape[-2:]) <= tile:
        return run(image)
    return tiled_apply(image, run, scale, tile)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="onestep-sr", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("upscale", help="upscale image files or folders with a OneStep SR model")
    up.add_argument("inputs", nargs="+", help="PNG/JPEG/WebP files or folders of them")
    up.add_argument("-o", "--output", required=True, help="output folder (or a .png path for one input)")
    up.add_argument("--scale", type=int, choices=(4, 8), default=4, help="upscale factor")
    up.add_argument("--steps", type=int, default=1, help="network evaluations (1 = one step)")
    up.add_argument("--guidance", type=float, default=1.0, help="guidance weight (1 = off)")
    up.add_argument("--tile", type=int, default=0, help="tile size in input pixels (0 = from free memory)")
    up.add_argument("--seed", type=int, default=0, help="seed for stochastic sampling")
    up.add_argument("--model", default=str(DEFAULT_MODEL), help="a OneStep SR .safetensors model")
    up.add_argument("--precision", choices=PRECISIONS, default="auto",
                    help="auto: bf16 where the device computes it natively (twice as fast, same PSNR), else fp32")
    up.add_argument("--overwrite", action="store_true", help="replace output files that exist")
    args = parser.parse_args(argv)

    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.tile < 0:
        parser.error(f"--tile must be 0 (automatic) or a positive size, got {args.tile}")
    try:
        sources = find_images(args.inputs)
    except FileNotFoundError as error:
        parser.error(str(error))
    if not sources:
        parser.error("no PNG/JPEG/WebP images found in the inputs")
    try:
        net = load_model(args.model)
    except (OSError, ValueError, SafetensorError) as error:
        parser.error(f"--model {args.model} cannot be loaded ({error}); give a OneStep SR .safetensors "
                     "model, or leave --model out for the shipped default")
    out = Path(args.output)
    failed = 0
    for source in tqdm(sources, desc="upscaling", unit="image"):
        target = output_path(source, out, args.scale, len(sources) == 1)
        try:
            if target.exists() and not args.overwrite:
                raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
            result = upscale_file(net, source, args.scale, args.steps, args.guidance, args.tile, args.seed,
                                  args.precision)
            write_png(result, target, args.overwrite)
        except (OSError, UnidentifiedImageError, ValueError) as error:
            failed += 1
            tqdm.write(f"skipped {source}: {error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
