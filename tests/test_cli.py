"""`onestep-sr upscale` (issue 3's main job): files and folders, PNG/JPEG/WebP in, PNG out, alpha and
greyscale kept, bad files named and skipped, nothing overwritten without --overwrite."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onestep_sr.cli import DEFAULT_MODEL, main
from onestep_sr.files.images import read_image
from onestep_sr.models.flow_map_sr import load_model
from onestep_sr.models.pipeline import upscale

REPO = Path(__file__).resolve().parent.parent


def photo(height=12, width=16, seed=0):
    """A smooth random RGB image (uint8 array): JPEG and WebP keep it recognisable."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))


def run(*args):
    return main(["upscale", *map(str, args)])


def test_files_and_folders_of_every_format_become_pngs_at_the_scale(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(photo()).save(folder / "a.png")
    Image.fromarray(photo(seed=1)).save(folder / "b.jpg", quality=95)
    Image.fromarray(photo(seed=2)).save(folder / "c.webp")
    (folder / "notes.txt").write_text("not an image: ignored by its suffix")
    single = tmp_path / "d.png"
    Image.fromarray(photo(8, 10, seed=3)).save(single)

    assert run(folder, single, "-o", tmp_path / "out", "--scale", 8) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["a_x8.png", "b_x8.png", "c_x8.png", "d_x8.png"]  # no temporary files left
    for name in ("a_x8.png", "b_x8.png", "c_x8.png"):
        with Image.open(tmp_path / "out" / name) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (16 * 8, 12 * 8)
    # one input and a .png output: written exactly there
    assert run(single, "-o", tmp_path / "one.png") == 0
    with Image.open(tmp_path / "one.png") as image:
        assert image.size == (10 * 4, 8 * 4)


def test_the_output_is_the_default_models_float32_upscale(tmp_path):
    source = tmp_path / "a.png"
    Image.fromarray(photo()).save(source)
    assert run(source, "-o", tmp_path / "out.png", "--steps", 2, "--precision", "fp32") == 0
    expected = upscale(load_model(str(DEFAULT_MODEL)), read_image(source), 4, steps=2)
    expected = (expected[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), expected)


def test_alpha_and_greyscale_are_kept(tmp_path):
    rgba = np.dstack([photo(), np.where(np.arange(16) < 8, 0, 255).astype(np.uint8)[None].repeat(12, 0)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(photo()[..., 0], "L").save(tmp_path / "grey.png")
    palette = Image.fromarray(photo()).convert("P")
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png", transparency=0)
    assert run(tmp_path / "rgba.png", tmp_path / "grey.png", tmp_path / "palette.png", "-o", tmp_path / "out") == 0

    with Image.open(tmp_path / "out" / "rgba_x4.png") as image:
        assert image.mode == "RGBA" and image.size == (64, 48)
        alpha = np.asarray(image)[..., 3]
    assert alpha[:, :24].max() == 0 and alpha[:, 40:].min() == 255  # transparent half stays transparent
    with Image.open(tmp_path / "out" / "grey_x4.png") as image:
        assert image.mode == "L" and image.size == (64, 48)
    with Image.open(tmp_path / "out" / "palette_x4.png") as image:
        assert image.mode == "RGBA"


def test_a_bad_file_is_named_and_skipped_and_the_others_are_written(tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"this is no PNG")
    Image.fromarray(photo()).save(tmp_path / "good.png")
    assert run(tmp_path, "-o", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert f"skipped {tmp_path / 'broken.png'}" in err and "good.png" not in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good_x4.png"]


def test_existing_outputs_are_kept_unless_overwrite_is_given(tmp_path, capsys):
    source = tmp_path / "a.png"
    Image.fromarray(photo()).save(source)
    target = tmp_path / "out" / "a_x4.png"
    target.parent.mkdir()
    target.write_bytes(b"earlier work")

    assert run(source, "-o", target.parent) == 1
    assert target.read_bytes() == b"earlier work"
    assert "--overwrite" in capsys.readouterr().err
    assert run(source, "-o", target.parent, "--overwrite") == 0
    with Image.open(target) as image:
        assert image.size == (64, 48)
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # a normal file, not the temporary file's 0600


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--tile", "-1"], "--tile must be 0"),
    (["--precision", "half"], "invalid choice: 'half'"),
    (["--device", "gpu"], "invalid choice: 'gpu'"),
    (["--model", "missing.safetensors"], "--model missing.safetensors cannot be loaded"),
    (["--guidance", "nan"], "--guidance must be a finite number >= 0"),
    (["--guidance", "inf"], "--guidance must be a finite number >= 0"),
    (["--guidance", "-1"], "--guidance must be a finite number >= 0"),
    (["--seed", str(2 ** 64)], "--seed must lie in [0, 2^64 - 1]"),
    (["--seed", "-1"], "--seed must lie in [0, 2^64 - 1]"),
    (["--tile", "8"], "--tile must be 0 (automatic) or at least 32"),
])
def test_bad_arguments_name_the_input_and_the_fix(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(photo()).save("a.png")
    with pytest.raises(SystemExit) as exit_info:
        run("a.png", "-o", "out", *args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not Path("out").exists()


def test_a_model_file_that_is_not_onestep_sr_is_refused_by_name(tmp_path, capsys):
    from safetensors.torch import save_file
    save_file({"weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    Image.fromarray(photo()).save(tmp_path / "a.png")
    with pytest.raises(SystemExit):
        run(tmp_path / "a.png", "-o", tmp_path / "out", "--model", tmp_path / "other.safetensors")
    assert "not a OneStep SR default model file" in capsys.readouterr().err


def test_missing_inputs_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(tmp_path / "nowhere.png", "-o", tmp_path / "out")
    assert "nowhere.png' does not exist" in capsys.readouterr().err


def test_the_installed_command_upscales_the_bundled_example(tmp_path):
    """The README's main job, through the console script pip installed (a progress bar on stderr)."""
    command = Path(sys.executable).parent / "onestep-sr"
    result = subprocess.run([str(command), "upscale", str(REPO / "assets" / "example.png"), "-o", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "upscaling" in result.stderr and "1/1" in result.stderr
    with Image.open(REPO / "assets" / "example.png") as source, Image.open(tmp_path / "example_x4.png") as out:
        assert out.size == (source.width * 4, source.height * 4)


@pytest.mark.parametrize("args", [["--help"], ["upscale", "--help"], ["upscale", "missing.png", "-o", "out"],
                                  ["upscale", "x.png", "-o", "out", "--steps", "0"],
                                  ["upscale", "x.png", "-o", "out", "--tile", "8"],
                                  ["upscale", "x.png", "-o", "out", "--guidance", "nan"],
                                  ["upscale", "x.png", "-o", "out.jpg"]])
def test_help_and_usage_errors_return_before_torch_is_imported(args, tmp_path):
    code = ("import sys\nfrom onestep_sr.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    (tmp_path / "x.png").write_bytes(b"")
    run = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


# ---------------------------------------------------------------- odd inputs (issue 15)


def test_the_largest_seed_works(tmp_path):
    Image.fromarray(photo()).save(tmp_path / "a.png")
    assert run(tmp_path / "a.png", "-o", tmp_path / "out", "--seed", 2 ** 64 - 1) == 0


@pytest.mark.parametrize("names", [("a/x.png", "b/x.png"), ("x.png", "x.jpg")])
def test_inputs_that_map_to_one_output_are_refused_before_any_work(tmp_path, monkeypatch, capsys, names):
    monkeypatch.chdir(tmp_path)
    for name in names:
        Path(name).parent.mkdir(exist_ok=True)
        Image.fromarray(photo()).save(name)
    with pytest.raises(SystemExit) as exit_info:
        run(*names, "-o", "out")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and all(name in err for name in names)
    assert str(Path("out") / "x_x4.png") in err and not Path("out").exists()


def test_the_same_file_named_twice_is_upscaled_once(tmp_path):
    Image.fromarray(photo()).save(tmp_path / "a.png")
    assert run(tmp_path / "a.png", tmp_path, "-o", tmp_path / "out") == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a_x4.png"]


@pytest.mark.parametrize("output, message", [("out.png", "-o out.png names one PNG file, but 2 images"),
                                             ("out.jpg", "-o out.jpg: outputs are PNG files")])
def test_a_file_output_needs_one_input_and_png(tmp_path, monkeypatch, capsys, output, message):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(photo()).save("a.png")
    Image.fromarray(photo(seed=1)).save("b.png")
    with pytest.raises(SystemExit) as exit_info:
        run("a.png", "b.png", "-o", output)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]


def test_a_decompression_bomb_is_skipped_and_the_files_after_it_are_written(tmp_path, monkeypatch, capsys):
    Image.new("RGB", (64, 64)).save(tmp_path / "a_bomb.png")
    Image.fromarray(photo()).save(tmp_path / "b.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64² = 4096 px is past twice the limit
    assert run(tmp_path, "-o", tmp_path / "out") == 1
    assert "a_bomb.png is past PIL's decompression-bomb limit" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b_x4.png"]


def test_a_16_bit_grey_png_is_upscaled_from_its_full_depth(tmp_path):
    levels = (np.linspace(0, 1, 16 * 12).reshape(12, 16) * 65535).round().astype(np.uint16)
    Image.fromarray(levels).save(tmp_path / "deep.png")
    assert run(tmp_path / "deep.png", "-o", tmp_path / "out", "--precision", "fp32") == 0
    out = np.asarray(Image.open(tmp_path / "out" / "deep_x4.png")).astype(float)
    expected = upscale(load_model(str(DEFAULT_MODEL)), torch.from_numpy(levels / 65535.0).float()[None, None], 4)
    assert np.abs(out - expected[0, 0].numpy() * 255).max() <= 0.5 + 1e-6
    assert (out == 255).mean() < 0.05  # convert("L") made 98 % of such an image white


def test_a_nan_pixel_is_refused_and_nothing_is_written(tmp_path, capsys):
    values = np.full((12, 16), 0.5, np.float32)
    values[3, 4] = np.nan
    Image.fromarray(values).save(tmp_path / "nan.tiff")
    assert run(tmp_path / "nan.tiff", "-o", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "nan.tiff" in err and "not finite" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_out_of_memory_is_reported_per_file_and_the_batch_goes_on(tmp_path, monkeypatch, capsys):
    import onestep_sr.models.pipeline as pipeline

    Image.fromarray(photo()).save(tmp_path / "a.png")
    Image.fromarray(photo(seed=1)).save(tmp_path / "b.png")
    real = pipeline.upscale

    def upscale_running_out_on_a(net, image, *args, **kwargs):
        if image.shape[-1] == 16 and float(image.mean()) == float(first.mean()):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 GB")
        return real(net, image, *args, **kwargs)

    first = read_image(tmp_path / "a.png")
    monkeypatch.setattr(pipeline, "upscale", upscale_running_out_on_a)
    assert run(tmp_path, "-o", tmp_path / "out", "--tile", 32) == 1
    err = capsys.readouterr().err
    assert f"skipped {tmp_path / 'a.png'}: out of memory" in err and "--tile" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b_x4.png"]


def test_an_output_too_large_for_memory_is_refused_before_it_is_made(tmp_path, monkeypatch, capsys):
    import onestep_sr.processing.tiling as tiling

    Image.fromarray(photo()).save(tmp_path / "a.png")
    monkeypatch.setattr(tiling, "free_memory", lambda device: 10 ** 5)  # 100 kB free
    assert run(tmp_path / "a.png", "-o", tmp_path / "out", "--scale", 8) == 1
    err = capsys.readouterr().err
    assert "x8 makes a 128x96 output" in err and "MB of memory" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_exif_orientation_and_icc_profile_reach_the_output(tmp_path):
    from test_odd_files import icc_profile

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo()).save(tmp_path / "phone.jpg", exif=exif, icc_profile=icc_profile(b"RGB "), quality=95)
    assert run(tmp_path / "phone.jpg", "-o", tmp_path / "out") == 0
    with Image.open(tmp_path / "out" / "phone_x4.png") as out:
        assert out.size == (12 * 4, 16 * 4)  # portrait, as the photo is shown
        assert out.info.get("icc_profile") == icc_profile(b"RGB ")


def test_the_command_says_where_the_outputs_went(tmp_path, capsys):
    Image.fromarray(photo()).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"no PNG")
    assert run(tmp_path, "-o", tmp_path / "out") == 1
    assert f"wrote 1 image to {tmp_path / 'out'}; skipped 1 (named above)" in capsys.readouterr().out


def test_every_output_is_named_with_its_source(tmp_path, capsys):
    for name in ("a", "b"):
        Image.fromarray(photo()).save(tmp_path / f"{name}.png")
    assert run(tmp_path / "a.png", tmp_path / "b.png", "-o", tmp_path / "out", "--device", "cpu") == 0
    lines = capsys.readouterr().out.splitlines()
    for name in ("a", "b"):
        assert f"{tmp_path / name}.png -> {tmp_path / 'out' / name}_x4.png" in lines
    assert lines[-1] == f"wrote 2 images to {tmp_path / 'out'}"


@pytest.mark.parametrize("device, absent, message", [
    ("cuda", "cuda", "--device cuda: no CUDA GPU is visible to torch"),
    ("mps", "mps", "--device mps: Apple's MPS is not available"),
])
def test_an_absent_device_is_refused_by_name(tmp_path, monkeypatch, capsys, device, absent, message):
    if absent == "cuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    else:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    Image.fromarray(photo()).save(tmp_path / "a.png")
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path / "a.png", "-o", tmp_path / "out", "--device", device)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "use auto or cpu" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("cuda, mps, expected", [
    (True, True, "cuda:0"), (False, True, "mps"), (False, False, "cpu"), (True, False, "cuda:0")])
def test_auto_takes_cuda_then_mps_then_the_cpu(monkeypatch, cuda, mps, expected):
    from onestep_sr.models.precision import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert str(resolve_device("auto")) == expected


def test_each_launched_process_takes_its_own_gpu(monkeypatch):
    from onestep_sr.models.precision import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [str(resolve_device("cuda", rank)) for rank in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]


@pytest.mark.parametrize("device_type, bf16, capability, expected", [
    ("cuda", True, (8, 0), "bf16"),    # Ampere and later
    ("cuda", False, (7, 5), "fp16"),   # Turing: fp16 tensor cores, no bf16
    ("cuda", False, (6, 1), "fp32"),   # Pascal: fp16 at a fraction of the fp32 rate
    ("mps", False, None, "fp16"),
])
def test_auto_precision_is_the_half_precision_the_device_computes_natively(monkeypatch, device_type, bf16,
                                                                           capability, expected):
    from onestep_sr.models.precision import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: device_type == "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: capability)
    assert resolve_precision("auto", device_type) == expected


def _launched(tmp_path, processes, folder, out):
    """`accelerate launch --num_processes N -m onestep_sr.cli upscale folder -o out` on CPU processes."""
    from onestep_sr.testing.comfy_host import free_port

    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "-m", "onestep_sr.cli", "upscale", str(folder),
               "-o", str(out), "--device", "cpu", "--precision", "fp32"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)


@pytest.mark.slow
def test_two_launched_processes_write_the_same_files_as_one(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(5):  # odd: one process gets a round fewer
        Image.fromarray(photo(12, 16, seed=index)).save(folder / f"photo{index}.png")
    Image.fromarray(photo()).save(folder / "broken.png")
    (folder / "broken.png").write_bytes((folder / "broken.png").read_bytes()[:40])  # truncated: skipped
    assert main(["upscale", str(folder), "-o", str(tmp_path / "one"), "--device", "cpu", "--precision", "fp32"]) == 1

    result = _launched(tmp_path, 2, folder, tmp_path / "two")
    assert result.returncode != 0  # the broken file, skipped by one of the processes, fails the run
    one, two = sorted((tmp_path / "one").iterdir()), sorted((tmp_path / "two").iterdir())
    assert [p.name for p in two] == [p.name for p in one] == [f"photo{i}_x4.png" for i in range(5)]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two))
    # one process speaks: one bar (every state over all 6 files, never going back, ending at 6), each output
    # once, the skip once, one summary
    bar = re.findall(r"\| *(\d+)/(\d+) \[", result.stderr)
    done = [int(count) for count, _ in bar]
    assert {total for _, total in bar} == {"6"} and done == sorted(done) and done[-1] == 6
    assert result.stderr.count("skipped") == 1
    lines = result.stdout.splitlines()
    assert sorted(line for line in lines if " -> " in line) == [
        f"{folder / f'photo{i}.png'} -> {tmp_path / 'two' / f'photo{i}_x4.png'}" for i in range(5)]
    assert lines.count(f"wrote 5 images to {tmp_path / 'two'} (2 processes); skipped 1 (named above)") == 1
