"""Image files <-> float tensors [1, C, H, W] in [0, 1]: the one reader the CLI, the trainers' folder
input and the photo registry share, and the PNG writer.

numpy, PIL and torch are imported by the functions that need them, so that listing image files
(the CLI checking its arguments) imports none of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .atomic import atomic_write

if TYPE_CHECKING:
    import torch
    from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
PNG_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files directly inside `folder`, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


# 16-bit (and 32-bit integer) grey modes: their levels run to 65535, not 255.
DEEP_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# Modes with an alpha channel, read as RGBA (palettes too when they have a transparent entry).
ALPHA_MODES = ("LA", "La", "PA", "RGBa")
# ICC colour space signature (bytes 16..20 of the profile header) of each PNG mode written.
ICC_SPACE_OF_MODE = {"L": b"GRAY", "RGB": b"RGB ", "RGBA": b"RGB "}


@dataclass(frozen=True)
class ImageFile:
    """An image file's pixels [1, C, H, W] in [0, 1] (as the file is meant to be shown: EXIF orientation
    applied) and its embedded ICC colour profile (None without one)."""

    pixels: torch.Tensor
    icc_profile: bytes | None


def image_tensor(image: Image.Image, rgb: bool = False) -> torch.Tensor:
    """An open PIL image as [1, C, H, W] float in [0, 1]. rgb=False keeps what the image holds: C = 1
    (grey, 16-bit grey at its full depth), 3 (RGB; CMYK, YCbCr, LAB, HSV converted) or 4 (RGBA, also
    for palettes with transparency); rgb=True converts to 3 channels (alpha dropped). Non-finite
    pixels (float images) raise ValueError."""
    import numpy as np
    import torch

    if image.mode in DEEP_GREY_MODES or image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        if image.mode != "F":
            array = array / 65535.0
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise ValueError(f"{bad} pixel(s) are not finite (NaN or infinity)")
        array = np.clip(array, 0.0, 1.0)[..., None]
        if rgb:
            array = np.repeat(array, 3, axis=-1)
    else:
        if image.mode == "La":  # premultiplied grey + alpha: PIL converts it onwards only from LA
            image = image.convert("LA")
        if rgb:
            image = image.convert("RGB")
        elif image.mode in ALPHA_MODES or "transparency" in image.info:
            image = image.convert("RGBA")
        elif image.mode not in ("L", "RGB", "RGBA"):
            image = image.convert("L" if image.mode == "1" else "RGB")
        array = np.asarray(image, dtype=np.float32) / 255.0
        if array.ndim == 2:
            array = array[..., None]
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None].contiguous()


def load_image(path: str | os.PathLike, rgb: bool = False) -> ImageFile:
    """The image file at `path` (see `image_tensor` for the channels). A file PIL cannot decode,
    one past PIL's decompression-bomb limit or one with non-finite pixels raises ValueError naming it."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image.load()
            profile = image.info.get("icc_profile") or None
            return ImageFile(image_tensor(ImageOps.exif_transpose(image), rgb), profile)
    except Image.DecompressionBombError as error:
        raise ValueError(f"{path} is past PIL's decompression-bomb limit ({error}); if it is a real image, "
                         "downscale or crop it first") from None
    except (OSError, SyntaxError, ValueError) as error:  # PIL reports broken files with any of these
        raise ValueError(f"{path} cannot be read as an image ({error}); check that it is a complete "
                         f"image file") from None


def read_image(path: str | os.PathLike, rgb: bool = False) -> torch.Tensor:
    """[1, C, H, W] float in [0, 1] of the image file at `path` (`load_image` without the profile)."""
    return load_image(path, rgb).pixels


def write_png(image: torch.Tensor, path: str | os.PathLike, overwrite: bool, icc_profile: bytes | None = None) -> None:
    """Write [1, C, H, W] in [0, 1] (C = 1, 3 or 4) as an 8-bit PNG, atomically; an existing file is
    kept unless `overwrite`. `icc_profile` is embedded when its colour space is the PNG's (grey or
    RGB); non-finite pixels raise ValueError and nothing is written."""
    import numpy as np
    import torch
    from PIL import Image

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    bad = int((~torch.isfinite(image)).sum())
    if bad:
        raise ValueError(f"{bad} output value(s) are not finite (NaN or infinity); {path} was not written")
    array = (image[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    mode = PNG_MODES[array.shape[-1]]
    pil = Image.fromarray(array[..., 0] if mode == "L" else array, mode=mode)
    fits = icc_profile is not None and icc_profile[16:20] == ICC_SPACE_OF_MODE[mode]
    atomic_write(path, lambda tmp: pil.save(tmp, format="PNG", icc_profile=icc_profile if fits else None))
