"""Tiled application: exact for pointwise functions, seam-free for local ones, OOM retries, progress."""

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from onestep_sr.processing import tiling
from onestep_sr.processing.tiling import (TileOutOfMemoryError, auto_tile_size, axis_weights, balanced_tile,
                                          default_overlap, is_out_of_memory, ramp, tile_starts, tiled_apply)

torch.set_num_threads(1)


def nearest(scale):
    return lambda tile: F.interpolate(tile, scale_factor=scale, mode="nearest")


def psnr(a, b):
    return 10 * math.log10(1.0 / F.mse_loss(a, b).item())


@pytest.mark.parametrize("height,width,scale,tile,overlap", [
    (37, 53, 4, 16, 4), (64, 64, 2, 32, 8), (5, 200, 3, 24, 6), (130, 17, 1, 48, 20), (100, 100, 4, 40, 10),
])
@pytest.mark.parametrize("blend", ["cosine", "gaussian"])
def test_nearest_upscale_tiled_equals_untiled(height, width, scale, tile, overlap, blend):
    image = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(height * width))
    expected = nearest(scale)(image)
    result = tiled_apply(image, nearest(scale), scale, tile, overlap, blend=blend)
    assert result.shape == expected.shape
    assert (result - expected).abs().max().item() <= 1e-6


def test_latent_channels_and_channel_changing_fn():
    """Nothing assumes 3 channels: a 16-channel latent mapped to 4 channels at x2, pointwise."""
    latent = torch.randn(1, 16, 45, 29, generator=torch.Generator().manual_seed(0))

    def fn(tile):
        return nearest(2)(torch.tanh(tile[:, :4] * tile[:, 4:8]))

    result = tiled_apply(latent, fn, 2, 16, unit_px=8)
    assert result.shape == (1, 4, 90, 58)
    assert (result - fn(latent)).abs().max().item() <= 1e-6


def test_default_overlap_is_at_least_64_output_pixels():
    assert default_overlap(4) == 16
    assert default_overlap(1, unit_px=8) == 8
    assert default_overlap(3) == 22  # ceil(64 / 3)
    assert all(default_overlap(s, u) * s * u >= 64 for s in (1, 2, 3, 4, 8) for u in (1, 8, 16))


def test_tile_larger_than_image_is_one_call():
    image = torch.rand(1, 3, 20, 30)
    calls = []

    def fn(tile):
        calls.append(tuple(tile.shape))
        return nearest(2)(tile)

    result = tiled_apply(image, fn, 2, 512)
    assert calls == [(1, 3, 20, 30)]
    assert torch.equal(result, nearest(2)(image))


def test_local_conv_tiled_vs_untiled_psnr_over_40db():
    """1024x1024 output of a receptive-field-5 conv after x2 upscale: seams blended away."""
    generator = torch.Generator().manual_seed(1)
    image = F.interpolate(torch.rand(1, 3, 32, 32, generator=generator), size=(512, 512), mode="bicubic")
    image = (image + 0.1 * torch.rand(1, 3, 512, 512, generator=generator)).clamp(0, 1)
    kernel = torch.rand(3, 3, 5, 5, generator=generator)
    kernel = kernel / kernel.sum(dim=(1, 2, 3), keepdim=True)

    def fn(tile):
        return F.conv2d(F.interpolate(tile, scale_factor=2, mode="bilinear"), kernel, padding=2)

    untiled = fn(image)
    tiled = tiled_apply(image, fn, 2, 128)
    assert tiled.shape == (1, 3, 1024, 1024)
    assert psnr(tiled, untiled) >= 40
    # the same tiles pasted without blending (overlap 0) show the seams
    assert psnr(tiled_apply(image, fn, 2, 128, 0), untiled) < psnr(tiled, untiled) - 3


def test_tile_starts_cover_with_overlap():
    for size, tile, overlap, multiple in [(53, 16, 4, 1), (1000, 128, 16, 1), (96, 32, 8, 8), (129, 128, 16, 1)]:
        starts = tile_starts(size, tile, overlap, multiple)
        assert starts[0] == 0 and starts[-1] == size - tile
        assert all(s % multiple == 0 for s in starts)
        for first, second in zip(starts, starts[1:]):
            assert 0 < second - first <= tile - overlap
    assert tile_starts(100, 40, 10) == [0, 30, 60]
    assert tile_starts(30, 40, 10) == [0]
    with pytest.raises(ValueError, match="must exceed overlap"):
        tile_starts(100, 10, 10)


def test_balanced_tiles_are_as_few_and_smaller():
    assert balanced_tile(256, 128, 16) == 96 and tile_starts(256, 96, 16) == [0, 80, 160]
    assert balanced_tile(100, 64, 8) == 54
    assert balanced_tile(30, 40, 10) == 30
    assert balanced_tile(96, 64, 8, multiple=8) == 56
    for size in range(20, 300, 7):
        for tile, overlap in [(16, 4), (64, 16), (100, 30)]:
            side = balanced_tile(size, tile, overlap)
            assert side <= tile and len(tile_starts(size, side, overlap)) == len(tile_starts(size, tile, overlap))


def test_cosine_ramps_are_a_partition_of_unity_before_normalising():
    up = ramp(10, "cosine")
    ones = torch.ones(30, dtype=torch.float64)
    assert torch.allclose(up + up.flip(0), ones[:10], atol=1e-12)
    assert torch.allclose(up, torch.sin(math.pi / 2 * (torch.arange(10, dtype=torch.float64) + 0.5) / 10) ** 2)
    # regular layout with exact overlaps: the normalised weights are the raw cosine ramps
    first, middle, last = axis_weights([0, 30, 60], 40, 100, 1, "cosine")
    assert torch.allclose(first[:30], ones) and torch.allclose(first[30:], up.flip(0))
    assert torch.allclose(middle[:10], up) and torch.allclose(middle[10:30], ones[:20])
    assert torch.allclose(middle[30:], up.flip(0))
    assert torch.allclose(last[:10], up) and torch.allclose(last[10:], ones)


@pytest.mark.parametrize("blend", ["cosine", "gaussian"])
def test_normalised_weights_sum_to_one_in_2d(blend):
    height, width, tile, overlap, scale = 77, 130, 32, 12, 2
    starts_y, starts_x = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    total = torch.zeros(height * scale, width * scale, dtype=torch.float64)
    for y, wy in zip(starts_y, axis_weights(starts_y, tile, height, scale, blend)):
        for x, wx in zip(starts_x, axis_weights(starts_x, tile, width, scale, blend)):
            assert (wy > 0).all() and (wx > 0).all()
            total[y * scale:(y + tile) * scale, x * scale:(x + tile) * scale] += wy[:, None] * wx[None, :]
    assert torch.allclose(total, torch.ones_like(total), atol=1e-12)


def oom_above(limit_pixels, error):
    """nearest x2 that fails like a GPU would on tiles above ``limit_pixels``; records tile sides."""
    sides = []

    def fn(tile):
        sides.append(tuple(tile.shape[-2:]))
        if tile.shape[-2] * tile.shape[-1] > limit_pixels:
            raise error
        return nearest(2)(tile)
    return fn, sides


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                                   RuntimeError("CUDA error: out of memory"),
                                   RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory")])
def test_out_of_memory_halves_the_tile_and_finishes(error):
    image = torch.rand(1, 3, 100, 100)
    fn, sides = oom_above(32 * 32, error)
    progress = []
    result = tiled_apply(image, fn, 2, 64, 8, callback=lambda done, total: progress.append((done, total)))
    first, halved = balanced_tile(100, 64, 8), balanced_tile(100, 32, 8)
    assert sides[0] == (first, first) and set(sides[1:]) == {(halved, halved)}
    assert (result - nearest(2)(image)).abs().max().item() <= 1e-6
    tiles = len(tile_starts(100, halved, 8)) ** 2
    assert progress == [(done, tiles) for done in range(1, tiles + 1)]


def test_out_of_memory_at_the_minimum_tile_raises_clearly():
    fn, sides = oom_above(0, torch.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(TileOutOfMemoryError, match="min_tile=16") as caught:
        tiled_apply(torch.rand(1, 3, 100, 100), fn, 2, 64, 8, min_tile=16)
    assert sides == [(side, side) for side in (balanced_tile(100, 64, 8), balanced_tile(100, 32, 8), 16)]
    assert is_out_of_memory(caught.value.__cause__)


def test_halving_starts_from_the_image_when_it_is_smaller_than_the_tile():
    fn, sides = oom_above(20 * 20, torch.OutOfMemoryError("out of memory"))
    tiled_apply(torch.rand(1, 3, 40, 40), fn, 2, 1024, 4)
    halved = balanced_tile(40, 20, 4)
    assert sides[0] == (40, 40) and set(sides[1:]) == {(halved, halved)}


def test_other_errors_are_not_retried():
    fn, sides = oom_above(0, ValueError("bad weights"))
    with pytest.raises(ValueError, match="bad weights"):
        tiled_apply(torch.rand(1, 3, 100, 100), fn, 2, 64, 8)
    assert len(sides) == 1
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_callback_sees_every_tile_and_raising_stops_the_run():
    image = torch.rand(1, 3, 100, 100)
    seen = []
    tiled_apply(image, nearest(2), 2, 40, 10, callback=lambda done, total: seen.append((done, total)))
    assert seen == [(done, 9) for done in range(1, 10)]  # 3 x 3 tiles

    class Interrupted(Exception):
        pass

    calls = []

    def cancel_at_three(done, total):
        if done == 3:
            raise Interrupted

    def fn(tile):
        calls.append(1)
        return nearest(2)(tile)

    with pytest.raises(Interrupted):
        tiled_apply(image, fn, 2, 40, 10, callback=cancel_at_three)
    assert len(calls) == 3


def test_bad_inputs_give_clear_errors():
    image = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match="scale=2 matches fn"):
        tiled_apply(image, nearest(4), 2, 32, 8)
    with pytest.raises(ValueError, match="tile \\(32\\) must exceed overlap \\(32\\)"):
        tiled_apply(image, nearest(2), 2, 32)  # default overlap at x2 is 32 cells
    with pytest.raises(ValueError, match="blend 'hann' is unknown"):
        tiled_apply(image, nearest(2), 2, 32, blend="hann")
    with pytest.raises(ValueError, match="multiples of 8"):
        tiled_apply(torch.rand(1, 3, 60, 64), nearest(2), 2, 32, multiple=8)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        tiled_apply(torch.rand(3, 64, 64), nearest(2), 2, 32)
    with pytest.raises(ValueError, match="tile must be a positive integer"):
        tiled_apply(image, nearest(2), 2, 0)
    with pytest.raises(ValueError, match="overlap < min_tile"):
        tiled_apply(image, nearest(2), 2, 32, 16, min_tile=16)


def test_output_device_and_dtype_follow_fn():
    image = torch.rand(1, 3, 50, 50, dtype=torch.float64)
    result = tiled_apply(image, lambda tile: nearest(2)(tile).half(), 2, 32, 8)
    assert result.dtype == torch.float16
    assert (result.double() - nearest(2)(image)).abs().max().item() < 1e-3


def test_auto_tile_size_from_free_memory(monkeypatch):
    monkeypatch.setattr(tiling, "free_memory", lambda device: 2 ** 30)
    # half of 1 GiB at 1 KiB per pixel: 2**19 pixels, side isqrt(524288) = 724 -> 720 (multiple of 8)
    assert auto_tile_size(1024) == 720
    assert auto_tile_size(1024, multiple=64) == 704
    assert auto_tile_size(1, max_tile=2048) == 2048
    assert auto_tile_size(2 ** 30, min_tile=64) == 64
    with pytest.raises(ValueError, match="bytes_per_pixel"):
        auto_tile_size(0)


def test_free_memory_on_cpu(monkeypatch):
    psutil = pytest.importorskip("psutil")
    assert abs(tiling.free_memory("cpu") - psutil.virtual_memory().available) < 2 ** 30
    monkeypatch.setitem(sys.modules, "psutil", None)  # import now fails
    assert tiling.free_memory("cpu") == tiling.CPU_FALLBACK_FREE_BYTES
