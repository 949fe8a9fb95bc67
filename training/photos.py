"""Natural photographs that registry packages ship: the default model's training and held-out data.

Sources (nothing comes from a model hub or the web):
- ``lomiri/<file>``: Debian package ``lomiri-wallpapers-16.04``; ``mate/<file>``: Debian package
  ``mate-backgrounds`` (its nature photos): high-resolution JPEG photos, unpacked into the cache by
  ``scripts/fetch_training_photos.sh``, each downscaled by its package's factor in
  ``WALLPAPER_PACKAGES`` (which washes out the JPEG artefacts of the stored files) with the
  package's own bicubic downscale.
- ``skimage/<file>``: images bundled in the scikit-image wheel (read from its data folder; the
  pooch-downloaded ones are never touched).
- ``sklearn/<file>``: scikit-learn's sample images (china, flower).
- ``matplotlib/<file>``: matplotlib's sample data (a portrait).

``HELD_OUT`` never enters training; the benchmarks and the tests evaluate on it. It is chosen for
variety (a face, text, foliage, fur, architecture, skies), since smooth wallpapers alone have little
to gain and hide what a model does to detail. The manifest (`manifest`) lists every file with the
sha256 of its bytes and one hash of the whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..files.cache import cache_root
from ..files.digest import file_sha256
from ..files.images import read_image
from ..processing.resample import bicubic_downscale, crop_to_multiple

# origin -> (Debian package, downscale factor applied on loading)
WALLPAPER_PACKAGES = {"lomiri": ("lomiri-wallpapers-16.04", 3), "mate": ("mate-backgrounds", 2)}
MATE_NATURE = "mate/nature"
TRAIN = (
    "lomiri/Bridge_by_Sander_Klootwijk.jpg", "lomiri/Dragonfly_by_Bolly.jpg",
    "lomiri/Picture_0B_by_freespace.jpg", "lomiri/Wine_by_Jakkub_Mede.jpg",
    "lomiri/aitzgorri_by_Aitzol_Berasategi.jpg", "lomiri/analogpattern_by_Peter_Nerlich.jpg",
    "lomiri/free_by_Peter_Nerlich.jpg", "lomiri/greentock_by_Peter_Nerlich.jpg",
    "lomiri/seeding_by_Clements_Engelhardt.jpg", "lomiri/sunset_by_Aitzol_Berasategi.jpg",
    "lomiri/umang_by_Abhishek_Mudgal.jpg",
    *(f"{MATE_NATURE}/{name}.jpg" for name in ("Garden", "Dune", "Wood", "Aqua", "TwoWings", "GreenMeadow",
                                                "RainDrops", "LadyBird", "FreshFlower", "YellowFlower")),
    "skimage/astronaut.png", "skimage/coffee.png", "skimage/rocket.jpg",
    "skimage/motorcycle_left.png", "skimage/camera.png", "skimage/grass.png",
    "skimage/gravel.png", "skimage/brick.png",
    "sklearn/flower.jpg",
)
# Varied held-out photos: a face, text (two), fur (two), architecture, colourful fine detail, mountains
# and sky, foliage and water, storm clouds, leaf veins.
HELD_OUT = (
    "matplotlib/grace_hopper.jpg", "skimage/text.png", "skimage/page.png",
    "skimage/chelsea.png", "lomiri/friends_by_Aitzol_Berasategi.jpg", "sklearn/china.jpg",
    "lomiri/Picture_1A_by_freespace.jpg", "lomiri/picosdeeuropa_by_Aitzol_Berasategi.jpg",
    "lomiri/life_by_Aitzol_Berasategi.jpg", f"{MATE_NATURE}/Storm.jpg", f"{MATE_NATURE}/Blinds.jpg",
)
# The held-out photos the first default models were measured on (MODEL.md's earlier tables).
FIRST_HELD_OUT = HELD_OUT[3:9]


def cache_dir() -> Path:
    """Where fetched photos live (outside the repository): $ONESTEP_SR_CACHE/photos."""
    return cache_root() / "photos"


def source_path(key: str) -> Path:
    """The file behind a photo key such as ``skimage/astronaut.png``."""
    origin, _, name = key.partition("/")
    if origin in WALLPAPER_PACKAGES:
        package, _ = WALLPAPER_PACKAGES[origin]
        folder = "backgrounds" if origin == "lomiri" else "backgrounds/mate"
        path = cache_dir() / package / "usr" / "share" / folder / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: fetch the {package} photos first "
                                    "with scripts/fetch_training_photos.sh")
        return path
    modules = {"skimage": ("skimage", "data"), "sklearn": ("sklearn", "datasets/images"),
               "matplotlib": ("matplotlib", "mpl-data/sample_data")}
    if origin not in modules:
        raise ValueError(f"unknown photo origin in {key!r}; use one of "
                         f"{', '.join(sorted([*WALLPAPER_PACKAGES, *modules]))}")
    module, folder = modules[origin]
    try:
        package = __import__(module)
    except ImportError:
        pip_name = {"sklearn": "scikit-learn", "skimage": "scikit-image"}.get(module, module)
        raise ImportError(f"photo {key} needs {module}: pip install {pip_name}") from None
    return Path(package.__file__).parent / folder / name


def load_photo(key: str) -> torch.Tensor:
    """The photo `key` as a float RGB tensor [3, H, W] in [0, 1] (wallpapers downscaled)."""
    image = read_image(source_path(key), rgb=True)
    origin = key.partition("/")[0]
    if origin in WALLPAPER_PACKAGES:
        factor = WALLPAPER_PACKAGES[origin][1]
        image = bicubic_downscale(crop_to_multiple(image, factor), factor)
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


def manifest() -> dict:
    """Every training and held-out file with its sha256, and one hash of the whole list."""
    entries = {group: [{"key": key, "sha256": file_sha256(source_path(key))} for key in keys]
               for group, keys in (("train", TRAIN), ("held_out", HELD_OUT))}
    lines = "".join(f"{group}:{e['key']}:{e['sha256']}\n" for group in ("train", "held_out")
                    for e in entries[group])
    return {"wallpaper_packages": {origin: {"package": package, "downscale": factor}
                                   for origin, (package, factor) in WALLPAPER_PACKAGES.items()},
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
