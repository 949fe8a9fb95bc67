"""Hypothesis fuzzing of the pure functions (issue 15): tiling and blending, colour fix, start points,
schedules, LoRA key mapping, image reading. Each property is a known answer that holds for every input:
a pointwise network tiles to exactly its untiled result, blend weights sum to one, colour statistics match,
formulas hold, keys map as peft and ComfyUI name them, and files read back the values written."""

import math

import numpy as np
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from onestep_sr.adapters.formats import PEFT_KEY, peft_pattern_key, to_comfy_lora
from onestep_sr.files.images import image_tensor, read_image, write_png
from onestep_sr.processing.colour import colour_correct, lab_to_rgb, rgb_to_lab
from onestep_sr.processing.tiling import axis_weights, balanced_tile, tile_starts, tiled_apply
from onestep_sr.samplers.flow_map import shifted_times
from onestep_sr.samplers.start import START_MODES, start_point

# derandomized: a CI run tries the same examples every time; no example database in the checkout
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def tensors(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------- tiling and blending


@FUZZ
@given(size=st.integers(1, 300), tile=st.integers(2, 120), overlap=st.integers(0, 60), multiple=st.sampled_from([1, 2, 8]))
def test_tiles_cover_the_axis_with_the_overlap(size, tile, overlap, multiple):
    """(With multiple > 1, sizes and tiles are multiples of it, as tiled_apply requires.)"""
    size, tile = max(size // multiple, 1) * multiple, max(tile // multiple * multiple, multiple)
    assume(size <= tile or tile - overlap >= multiple)
    starts = tile_starts(size, tile, overlap, multiple)
    assert starts[0] == 0 and starts == sorted(set(starts))
    if size <= tile:
        assert starts == [0]
        return
    assert starts[-1] == size - tile  # the last tile ends at the border
    assert all(start % multiple == 0 for start in starts[:-1])
    assert all(later - earlier <= tile - overlap for earlier, later in zip(starts, starts[1:]))  # overlap kept
    side = balanced_tile(size, tile, overlap, multiple)
    assert side <= tile and len(tile_starts(size, side, overlap, multiple)) == len(starts)


@FUZZ
@given(size=st.integers(2, 200), tile=st.integers(4, 64), overlap=st.integers(0, 16), scale=st.integers(1, 4),
       blend=st.sampled_from(["cosine", "gaussian"]))
def test_blend_weights_sum_to_one_everywhere(size, tile, overlap, scale, blend):
    assume(size > tile and tile - overlap >= 1)
    starts = tile_starts(size, tile, overlap)
    total = torch.zeros(size * scale, dtype=torch.float64)
    for start, weight in zip(starts, axis_weights(starts, tile, size, scale, blend)):
        assert (weight > 0).all()
        total[start * scale:(start + tile) * scale] += weight
    assert torch.allclose(total, torch.ones_like(total), atol=1e-12)


@FUZZ
@given(height=st.integers(1, 70), width=st.integers(1, 70), tile=st.integers(8, 48), scale=st.integers(1, 3),
       channels=st.integers(1, 4), blend=st.sampled_from(["cosine", "gaussian"]), seed=st.integers(0, 2 ** 16))
def test_a_pointwise_network_tiles_to_its_untiled_result(height, width, tile, scale, channels, blend, seed):
    image = tensors((1, channels, height, width), seed)
    fn = lambda x: (x.repeat_interleave(scale, -2).repeat_interleave(scale, -1) * 2 - 0.5) ** 2
    out = tiled_apply(image, fn, scale, tile, overlap=tile // 4, blend=blend, min_tile=tile // 4 + 1)
    assert torch.allclose(out, fn(image), atol=1e-12)


# ---------------------------------------------------------------- colour fix


@FUZZ
@given(size=st.integers(4, 40), scale=st.integers(1, 4), channels=st.sampled_from([1, 3]), seed=st.integers(0, 2 ** 16))
def test_adain_gives_the_output_the_references_statistics(size, scale, channels, seed):
    output = tensors((1, channels, size * scale, size * scale), seed) * 0.5 + 0.25
    reference = tensors((1, channels, size, size), seed + 1) * 0.4 + 0.3
    fixed = colour_correct(output, reference, "adain")
    assert torch.allclose(fixed.mean((-2, -1)), reference.mean((-2, -1)), atol=1e-6)  # in range: no clamping
    assert torch.allclose(fixed.std((-2, -1), correction=0), reference.std((-2, -1), correction=0), atol=1e-6)


@FUZZ
@given(size=st.integers(4, 48), channels=st.sampled_from([1, 3, 4]), seed=st.integers(0, 2 ** 16),
       method=st.sampled_from(["wavelet", "adain", "lab"]))
def test_an_image_fixed_against_itself_stays_as_it_is(size, channels, seed, method):
    assume(method != "lab" or channels == 3)
    image = tensors((1, channels, size, size), seed)
    assert torch.allclose(colour_correct(image, image, method), image, atol=1e-5)


@FUZZ
@given(seed=st.integers(0, 2 ** 16), size=st.integers(1, 12))
def test_lab_round_trips(seed, size):
    rgb = tensors((1, 3, size, size), seed)
    assert torch.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-9)


# ---------------------------------------------------------------- start points and schedules


@FUZZ
@given(mode=st.sampled_from(START_MODES), t=st.floats(1e-3, 1.0), bridge=st.floats(0.0, 10.0),
       source_noise=st.sampled_from([0.0, 0.1]), seed=st.integers(0, 2 ** 16))
def test_start_points_follow_their_formulas(mode, t, bridge, source_noise, seed):
    if mode == "lr":
        t = 1.0
    lr, noise = tensors((1, 3, 4, 4), seed), tensors((1, 3, 4, 4), seed + 1)
    x = start_point(mode, lr, noise, t, bridge, source_noise)
    expected = {"lr": lr + source_noise * noise, "lr_at_T": lr + source_noise * noise, "noise": noise,
                "noised_lr": (1 - t) * lr + t * noise, "bridge": lr + bridge * math.sqrt(t * (1 - t)) * noise}[mode]
    assert torch.allclose(x, expected, atol=1e-12) and x is not lr and x is not noise


@FUZZ
@given(steps=st.integers(1, 200), t_start=st.floats(1e-3, 1.0), shift=st.floats(0.01, 100.0))
def test_schedules_run_from_t_start_down_to_zero(steps, t_start, shift):
    times = shifted_times(steps, t_start, shift).double()
    assert times.shape == (steps + 1,)
    assert math.isclose(float(times[0]), t_start, rel_tol=1e-6) and float(times[-1]) == 0.0
    assert bool((times[1:] < times[:-1]).all())  # strictly decreasing: every step moves
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)  # the FLUX / SD3 shift of the uniform grid
    assert torch.allclose(times, t_start * shift * u / (1 + (shift - 1) * u), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- LoRA key mapping

module_names = st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True), min_size=1, max_size=4).map(".".join)


@FUZZ
@given(module=module_names, prefix=st.sampled_from(["", "base_model.model.", "unet.", "transformer."]),
       adapter=st.sampled_from([None, "default", "vae_skip"]), rank=st.integers(1, 8),
       style=st.sampled_from(["peft", "diffusers_dot", "diffusers_underscore"]))
def test_peft_and_diffusers_keys_become_comfys_down_and_up(module, prefix, adapter, rank, style):
    name = prefix + module
    down, up = torch.zeros(rank, 5), torch.zeros(7, rank)
    if style == "peft":
        middle = f".{adapter}" if adapter else ""
        keys = {f"{name}.lora_A{middle}.weight": down, f"{name}.lora_B{middle}.weight": up}
    else:
        joint = ".lora" if style == "diffusers_dot" else "_lora"
        keys = {f"{name}{joint}.down.weight": down, f"{name}{joint}.up.weight": up}
    out, adapters = to_comfy_lora(keys, lambda m, r: 2.0 * r)
    assert set(out) == {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"}
    assert out[f"{name}.lora_down.weight"] is down and out[f"{name}.lora_up.weight"] is up
    assert float(out[f"{name}.alpha"]) == 2.0 * rank
    assert adapters == ([adapter] if style == "peft" and adapter else [])


@FUZZ
@given(module=module_names, other=st.dictionaries(module_names, st.integers(1, 4), max_size=3))
def test_keys_that_are_no_lora_pass_through(module, other):
    tensors_in = {f"{key}.weight": torch.zeros(value) for key, value in other.items()}
    assume(not any(PEFT_KEY.match(key) for key in tensors_in))
    out, adapters = to_comfy_lora(tensors_in)
    assert out == tensors_in and adapters == []


@FUZZ
@given(module=module_names, patterns=st.lists(st.one_of(module_names, module_names.map(lambda m: m + "|x"),
                                                        module_names.map(lambda m: m.split(".")[-1] + ".*")),
                                              max_size=4, unique=True))
def test_alpha_patterns_pick_the_key_peft_picks(module, patterns):
    """Known answer: peft's own get_pattern_key on the same patterns and module."""
    from peft.utils.other import get_pattern_key

    expected = get_pattern_key(patterns, module)
    assert peft_pattern_key(patterns, module) == (expected if expected in patterns else None)


# ---------------------------------------------------------------- image reading


@FUZZ
@given(height=st.integers(1, 24), width=st.integers(1, 24), mode=st.sampled_from(["L", "RGB", "RGBA", "I;16"]),
       seed=st.integers(0, 2 ** 16), suffix=st.sampled_from([".png", ".tiff"]))
def test_files_read_back_the_values_written(tmp_path_factory, height, width, mode, seed, suffix):
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        levels = rng.integers(0, 65536, (height, width), dtype=np.uint16)
        image, expected = Image.fromarray(levels), levels[None] / 65535.0
    else:
        channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
        levels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        image = Image.fromarray(levels[..., 0] if mode == "L" else levels, mode)
        expected = levels.transpose(2, 0, 1) / 255.0
    path = tmp_path_factory.mktemp("fuzz") / f"image{suffix}"
    image.save(path)
    pixels = read_image(path)
    assert pixels.shape == (1, *expected.shape) and pixels.dtype == torch.float32
    assert torch.allclose(pixels[0].double(), torch.from_numpy(expected), atol=1e-7)
    if mode != "I;16":  # 8 bits round-trip through the PNG writer exactly
        write_png(pixels, path.with_name("again.png"), overwrite=True)
        assert torch.equal(read_image(path.with_name("again.png")), pixels)


@FUZZ
@given(data=st.binary(max_size=256))
def test_any_bytes_read_as_an_image_or_a_value_error_naming_the_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "noise.png"
    path.write_bytes(data)
    try:
        pixels = read_image(path)
    except ValueError as error:
        assert "noise.png" in str(error)
    else:
        assert pixels.ndim == 4 and bool(torch.isfinite(pixels).all())


@FUZZ
@given(mode=st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F", "I;16"]),
       rgb=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_every_mode_reads_into_range(mode, rgb, seed):
    array = np.random.default_rng(seed).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(array).convert(mode if mode != "I;16" else "I")
    image = image.convert("I;16") if mode == "I;16" else image
    pixels = image_tensor(image, rgb)
    assert pixels.shape[-2:] == (5, 7) and pixels.shape[1] in ((3,) if rgb else (1, 3, 4))
    assert 0 <= float(pixels.min()) and float(pixels.max()) <= 1
