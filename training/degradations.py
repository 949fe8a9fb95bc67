"""The real-world degradation chain that makes LR training and evaluation inputs: pure, seeded, one
definition for training, benchmarks and tests.

Real-ESRGAN's second-order model (Wang et al. 2021), in its order. Per image of the batch:

    first order, at the HR size:  blur -> random resize (x0.15..1.5) -> noise -> JPEG
    second order:                 blur (p 0.8) -> random resize to x0.3..1.2 of the LR size -> noise
    last:                         [resize to the LR size + sinc, JPEG]  or  [JPEG, resize + sinc]

so the last noise and JPEG blocks sit at the LR image's own resolution, as in a photo that was
taken small or saved small. Blur kernels: isotropic / anisotropic Gaussian, generalised Gaussian,
plateau, and sinc (ringing); noise: Gaussian or Poisson, colour or grey; resize: area, bilinear or
bicubic; JPEG quality 30..95, twice. Every random choice comes from the ``numpy.random.Generator``
the caller seeds: the same generator state gives the same output.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..processing.resample import check_image

KERNELS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")


@dataclass(frozen=True)
class OrderSettings:
    """One order of the chain; defaults are Real-ESRGAN's first order."""

    blur_prob: float = 1.0
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)  # over KERNELS
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    generalized_beta: tuple[float, float] = (0.5, 4.0)
    plateau_beta: tuple[float, float] = (1.0, 2.0)
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_sigma: tuple[float, float] = (1.0, 30.0)  # in 8-bit levels
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_quality: tuple[int, int] = (30, 95)


FIRST_ORDER = OrderSettings()
SECOND_ORDER = OrderSettings(blur_prob=0.8, blur_sigma=(0.2, 1.5), resize_prob=(0.3, 0.4, 0.3),
                             resize_range=(0.3, 1.2), noise_sigma=(1.0, 25.0), poisson_scale=(0.05, 2.5))
FINAL_SINC_PROB = 0.8
KERNEL_SIZES = tuple(range(7, 22, 2))


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    axis = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    return torch.meshgrid(axis, axis, indexing="ij")


def _covariance_form(size: int, sigma_x: float, sigma_y: float, angle: float) -> torch.Tensor:
    """x^T Sigma^-1 x on a size x size grid for a Gaussian with these axis sigmas, rotated by angle."""
    yy, xx = _grid(size)
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = cos * xx + sin * yy, -sin * xx + cos * yy
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def blur_kernel(kind: str, size: int, sigma_x: float, sigma_y: float, angle: float, beta: float) -> torch.Tensor:
    """A normalised size x size blur kernel of `kind` (KERNELS): Gaussian exp(-q / 2), generalised
    Gaussian exp(-(q / 2)^beta / ...) written as exp(-0.5 q^beta), plateau 1 / (1 + q^beta), with q the
    quadratic form of the (anisotropic, rotated) covariance; "iso" kinds use sigma_y = sigma_x."""
    if kind not in KERNELS:
        raise ValueError(f"blur kernel must be one of {KERNELS}, got {kind!r}")
    if kind.endswith("iso") and not kind.endswith("aniso"):
        sigma_y, angle = sigma_x, 0.0
    q = _covariance_form(size, sigma_x, sigma_y, angle)
    if kind.startswith("generalized"):
        kernel = torch.exp(-0.5 * q ** beta)
    elif kind.startswith("plateau"):
        kernel = 1 / (1 + q ** beta)
    else:
        kernel = torch.exp(-0.5 * q)
    return (kernel / kernel.sum()).float()


def sinc_kernel(size: int, cutoff: float) -> torch.Tensor:
    """The circular low-pass (2-D sinc) kernel with cutoff frequency `cutoff` (radians per pixel):
    it rings near edges, as over-sharpened and resampled photos do."""
    yy, xx = _grid(size)
    radius = torch.sqrt(xx ** 2 + yy ** 2)
    safe = torch.where(radius == 0, torch.ones_like(radius), radius)
    kernel = cutoff * torch.special.bessel_j1(cutoff * safe) / (2 * math.pi * safe)
    kernel = torch.where(radius == 0, torch.full_like(radius, cutoff ** 2 / (4 * math.pi)), kernel)
    return (kernel / kernel.sum()).float()


def filter2d(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """[1, C, H, W] filtered by a [k, k] kernel per channel, edges reflected."""
    pad = kernel.shape[-1] // 2
    channels = image.shape[1]
    mode = "reflect" if pad < min(image.shape[-2:]) else "replicate"
    padded = F.pad(image, (pad, pad, pad, pad), mode=mode)
    return F.conv2d(padded, kernel.to(image).expand(channels, 1, *kernel.shape), groups=channels)


def jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip through PIL of a [1, C, H, W] image (values quantised to 8 bits)."""
    array = (image[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(buffer, format="JPEG",
                                                                             quality=int(quality))
    decoded = np.asarray(Image.open(buffer)).astype(np.float32) / 255
    decoded = decoded[..., None] if decoded.ndim == 2 else decoded
    return torch.from_numpy(decoded).permute(2, 0, 1)[None].to(image.dtype)


def _random_blur(image: torch.Tensor, rng: np.random.Generator, settings: OrderSettings) -> torch.Tensor:
    size = int(rng.choice(KERNEL_SIZES))
    if rng.random() < settings.sinc_prob:
        cutoff = rng.uniform(math.pi / 3, math.pi) if size < 13 else rng.uniform(math.pi / 5, math.pi)
        return filter2d(image, sinc_kernel(size, cutoff))
    kind = KERNELS[int(rng.choice(len(KERNELS), p=np.asarray(settings.kernel_prob) / sum(settings.kernel_prob)))]
    sigma_x, sigma_y = rng.uniform(*settings.blur_sigma), rng.uniform(*settings.blur_sigma)
    beta_range = settings.plateau_beta if kind.startswith("plateau") else settings.generalized_beta
    beta = rng.uniform(*beta_range)
    return filter2d(image, blur_kernel(kind, size, sigma_x, sigma_y, rng.uniform(-math.pi, math.pi), beta))


def _resize(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    size = (max(1, size[0]), max(1, size[1]))
    return F.interpolate(image, size=size, mode=mode, **({} if mode == "area" else {"align_corners": False}))


def _random_resize(image: torch.Tensor, rng: np.random.Generator, settings: OrderSettings,
                   base: tuple[int, int]) -> torch.Tensor:
    direction = int(rng.choice(3, p=settings.resize_prob))
    low, high = settings.resize_range
    factor = (rng.uniform(1, high), rng.uniform(low, 1), 1.0)[direction]
    mode = RESIZE_MODES[int(rng.integers(len(RESIZE_MODES)))]
    return _resize(image, (int(base[0] * factor), int(base[1] * factor)), mode)


def _random_noise(image: torch.Tensor, rng: np.random.Generator, settings: OrderSettings) -> torch.Tensor:
    grey = rng.random() < settings.gray_noise_prob
    shape = (1, 1, *image.shape[-2:]) if grey else image.shape
    if rng.random() < settings.gaussian_noise_prob:
        noise = rng.standard_normal(shape) * rng.uniform(*settings.noise_sigma) / 255
    else:  # Poisson (shot) noise of an 8-bit sensor, scaled
        levels = 255.0
        signal = image.mean(1, keepdim=True) if grey else image
        counts = np.clip(signal.numpy().astype(np.float64), 0, 1) * levels
        noise = (rng.poisson(counts) - counts) / levels * rng.uniform(*settings.poisson_scale)
    return (image + torch.from_numpy(noise.astype(np.float32)).expand_as(image)).clamp(0, 1)


def _order(image: torch.Tensor, rng: np.random.Generator, settings: OrderSettings,
           resize_base: tuple[int, int], with_jpeg: bool) -> torch.Tensor:
    if rng.random() < settings.blur_prob:
        image = _random_blur(image, rng, settings)
    image = _random_noise(_random_resize(image, rng, settings, resize_base), rng, settings)
    return jpeg(image, int(rng.integers(settings.jpeg_quality[0], settings.jpeg_quality[1] + 1))) if with_jpeg else image


def _final(image: torch.Tensor, rng: np.random.Generator, lr_size: tuple[int, int]) -> torch.Tensor:
    """Resize to the LR size with a sinc (or no) filter, and the last JPEG, in either order."""
    size = int(rng.choice(KERNEL_SIZES))
    cutoff = rng.uniform(math.pi / 3, math.pi)
    use_sinc = rng.random() < FINAL_SINC_PROB
    mode = RESIZE_MODES[int(rng.integers(len(RESIZE_MODES)))]
    quality = int(rng.integers(SECOND_ORDER.jpeg_quality[0], SECOND_ORDER.jpeg_quality[1] + 1))

    def resize_and_filter(x):
        x = _resize(x, lr_size, mode)
        return filter2d(x, sinc_kernel(size, cutoff)) if use_sinc else x

    if rng.random() < 0.5:
        return jpeg(resize_and_filter(image).clamp(0, 1), quality)
    return resize_and_filter(jpeg(image, quality))


def realistic_downscale(hr: torch.Tensor, scale: int, rng: np.random.Generator) -> torch.Tensor:
    """HR [B, C, H, W] in [0, 1] -> LR [B, C, H/scale, W/scale] through the seeded second-order
    chain of the module docstring, with its own random draws for every image of the batch."""
    check_image(hr, "hr")
    height, width = hr.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(f"the HR size {height}x{width} must be a multiple of scale {scale}")
    lr_size = (height // scale, width // scale)
    out = []
    for image in hr.float().split(1):
        image = _order(image, rng, FIRST_ORDER, (height, width), with_jpeg=True)
        image = _order(image, rng, SECOND_ORDER, lr_size, with_jpeg=False)
        out.append(_final(image, rng, lr_size))
    return torch.cat(out).clamp(0.0, 1.0).to(hr.dtype)
