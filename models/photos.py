"""Natural photographs that registry packages ship: the default model's training and held-out data.

Sources (nothing comes from a model hub or the web):
- ``lomiri/<file>``: Debian package ``lomiri-wallpapers-16.04`` (high-resolution JPEG photos),
  unpacked into the cache by ``scripts/fetch_training_photos.sh``; each is downscaled by
  ``WALLPAPER_DOWNSCALE`` (>= 2.5, DESIGN: washes out the JPEG artefacts) with the package's
  own bicubic downscale.
- ``skimage/<file>``: images bundled in the scikit-image wheel (read from its data folder; the
  pooch-downloaded ones are never touched).
- ``sklearn/<file>``: scikit-learn's sample images (china, flower).

``HELD_OUT`` never enters training; the benchmark and the tests evaluate on it. The manifest
(`manifest`) lists every file with the sha256 of its bytes and one hash of the whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .degrade import bicubic_downscale, crop_to_multiple

WALLPAPER_PACKAGE = "lomiri-wallpapers-16.04"
WALLPAPER_DOWNSCALE = 3
TRAIN = (
    "lomiri/Bridge_by_Sander_Klootwijk.jpg", "lomiri/Dragonfly_by_Bolly.jpg",
    "lomiri/Picture_0B_by_freespace.jpg", "lomiri/Wine_by_Jakkub_Mede.jpg",
    "lomiri/aitzgorri_by_Aitzol_Berasategi.jpg", "lomiri/analogpattern_by_Peter_Nerlich.jpg",
    "lomiri/free_by_Peter_Nerlich.jpg", "lomiri/greentock_by_Peter_Nerlich.jpg",
    "lomiri/seeding_by_Clements_Engelhardt.jpg", "lomiri/sunset_by_Aitzol_Berasategi.jpg",
    "lomiri/umang_by_Abhishek_Mudgal.jpg",
    "skimage/astronaut.png", "skimage/coffee.png", "skimage/rocket.jpg",
    "skimage/motorcycle_left.png", "skimage/camera.png", "skimage/grass.png",
    "skimage/gravel.png", "skimage/brick.png",
    "sklearn/flower.jpg",
)
# Diverse held-out photos: animal fur, city/architecture, colourful fine detail, wood and
# animals, mountains and sky, water and rocks.
HELD_OUT = (
    "skimage/chelsea.png", "sklearn/china.jpg",
    "lomiri/Picture_1A_by_freespace.jpg", "lomiri/friends_by_Aitzol_Berasategi.jpg",
    "lomiri/picosdeeuropa_by_Aitzol_Berasategi.jpg", "lomiri/life_by_Aitzol_Berasategi.jpg",
)


def cache_dir() -> Path:
    """Where fetched photos live (outside the repository): $ONESTEP_SR_CACHE/photos."""
    return Path(os.environ.get("ONESTEP_SR_CACHE", "~/.cache/onestep-sr")).expanduser() / "photos"


def source_path(key: str) -> Path:
    """The file behind a photo key such as ``skimage/astronaut.png``."""
    origin, _, name = key.partition("/")
    if origin == "lomiri":
        path = cache_dir() / "extracted" / "usr" / "share" / "backgrounds" / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: fetch the {WALLPAPER_PACKAGE} photos first "
                                    "with scripts/fetch_training_photos.sh")
        return path
    if origin == "skimage":
        import skimage
        return Path(skimage.__file__).parent / "data" / name
    if origin == "sklearn":
        try:
            import sklearn
        except ImportError:
            raise ImportError(f"photo {key} needs scikit-learn: pip install scikit-learn") from None
        return Path(sklearn.__file__).parent / "datasets" / "images" / name
    raise ValueError(f"unknown photo origin in {key!r}; use lomiri/, skimage/ or sklearn/")


def load_photo(key: str) -> torch.Tensor:
    """The photo `key` as a float RGB tensor [3, H, W] in [0, 1] (wallpapers downscaled)."""
    array = np.asarray(Image.open(source_path(key)).convert("RGB"), dtype=np.float32) / 255
    image = torch.from_numpy(array).permute(2, 0, 1)[None]
    if key.startswith("lomiri/"):
        image = bicubic_downscale(crop_to_multiple(image, WALLPAPER_DOWNSCALE), WALLPAPER_DOWNSCALE)
    return image[0].contiguous()


def held_out_image(key: str, size: int = 512) -> torch.Tensor:
    """The evaluation view of a held-out photo: its centre crop of at most size x size,
    cropped to a multiple of 8 so both x4 and x8 LR align; [1, 3, H, W] in [0, 1]."""
    if key not in HELD_OUT:
        raise ValueError(f"{key!r} is not a held-out photo; choose from {HELD_OUT}")
    image = load_photo(key)
    height, width = image.shape[-2:]
    crop_h, crop_w = min(height, size) // 8 * 8, min(width, size) // 8 * 8
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return image[None, :, top:top + crop_h, left:left + crop_w].contiguous()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest() -> dict:
    """Every training and held-out file with its sha256, and one hash of the whole list."""
    entries = {group: [{"key": key, "sha256": _sha256(source_path(key))} for key in keys]
               for group, keys in (("train", TRAIN), ("held_out", HELD_OUT))}
    lines = "".join(f"{group}:{e['key']}:{e['sha256']}\n" for group in ("train", "held_out")
                    for e in entries[group])
    return {"wallpaper_package": WALLPAPER_PACKAGE, "wallpaper_downscale": WALLPAPER_DOWNSCALE,
            **entries, "hash": hashlib.sha256(lines.encode()).hexdigest()}


def write_manifest(path: str | os.PathLike) -> dict:
    """Write `manifest()` as JSON to `path` (refuses to replace a different existing manifest)."""
    data = manifest()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and json.loads(path.read_text()).get("hash") != data["hash"]:
        raise FileExistsError(f"{path} holds a different data manifest; move it away first")
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data


class CropSampler:
    """Random HR crops of the training photos, area-weighted, with random flips and rotations."""

    def __init__(self, keys=TRAIN):
        overlap = sorted(set(keys) & set(HELD_OUT))
        if overlap:
            raise ValueError(f"held-out photos {overlap} must not be used for training")
        self.images = [load_photo(key) for key in keys]
        areas = np.array([image.shape[-1] * image.shape[-2] for image in self.images], dtype=np.float64)
        self.weights = areas / areas.sum()

    def sample(self, batch: int, size: int, rng: np.random.Generator) -> torch.Tensor:
        """[batch, 3, size, size] crops in [0, 1]."""
        crops = []
        for index in rng.choice(len(self.images), size=batch, p=self.weights):
            image = self.images[index]
            height, width = image.shape[-2:]
            if min(height, width) < size:
                raise ValueError(f"crop size {size} exceeds a training photo of {height}x{width}")
            top, left = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
            crop = image[:, top:top + size, left:left + size]
            if rng.random() < 0.5:
                crop = crop.flip(-1)
            crops.append(torch.rot90(crop, int(rng.integers(4)), dims=(-2, -1)))
        return torch.stack(crops).contiguous()
