"""SR training batches for the flow-map trainer: HR crops, their degraded LR, in [-1, 1].

`sr_batches` draws every random choice from the trainer's per-step generator, so a resumed run
sees the same data; `ImageCrops` samples crops from any set of HR images (an IMAGE batch or a
folder in ComfyUI) with photos.CropSampler's crop, flip and rotation rules.
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.pipeline import lr_source
from ..processing.resample import bicubic_downscale, bicubic_upscale
from .degradations import realistic_downscale
from .photos import CropSampler

# The upscale factors the default model is trained for (one model serves both).
SCALES = (4, 8)


class ImageCrops(CropSampler):
    """CropSampler over given images ([3, H, W] tensors in [0, 1]), area-weighted."""

    def __init__(self, images: list[torch.Tensor]):
        if not images:
            raise ValueError("no HR images to train on: give at least one image")
        bad = [tuple(image.shape) for image in images if image.ndim != 3 or image.shape[0] != 3]
        if bad:
            raise ValueError(f"HR images must be RGB tensors [3, H, W]; got shapes {bad[:4]}")
        self.images = [image.float().contiguous() for image in images]
        areas = np.array([image.shape[-1] * image.shape[-2] for image in self.images], dtype=np.float64)
        self.weights = areas / areas.sum()


def sr_batches(sampler: CropSampler, batch: int, crop: int, real_fraction: float, source_noise: float = 0.0,
               scales=SCALES):
    """batches(generator) -> {"x0": HR, "x1": source, "cond": upsampled LR}, all in [-1, 1]: one
    scale of `scales` per batch; per sample, the seeded real-world degradation (with probability
    real_fraction) or the clean bicubic downscale; start mode 'lr': the source is the bicubic-upsampled LR image plus
    Gaussian noise of std `source_noise` (models.pipeline.lr_source, as the default model
    samples). "cond" is the clean upsampled LR: networks without a condition input ignore it,
    the SR discriminators see it beside the image."""

    def draw(generator: torch.Generator) -> dict:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        rng = np.random.default_rng(seed)
        hr = sampler.sample(batch, crop, rng)
        scale = int(rng.choice(scales))
        real = torch.from_numpy(rng.random(batch) < real_fraction)
        lr = bicubic_downscale(hr, scale)
        if real.any():
            lr[real] = realistic_downscale(hr[real], scale, rng)
        upsampled = bicubic_upscale(lr, scale) * 2 - 1
        source = lr_source(upsampled, source_noise, torch.Generator().manual_seed(int(rng.integers(2**62))))
        return {"x0": hr * 2 - 1, "x1": source, "cond": upsampled}

    return draw
