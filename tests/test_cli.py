"""`onestep-sr upscale` (issue 3's main job): files and folders, PNG/JPEG/WebP in, PNG out, alpha and
greyscale kept, bad files named and skipped, nothing overwritten without --overwrite."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from onestep_sr.cli import DEFAULT_MODEL, main, read_image
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
    (["--precision", "fp16"], "invalid choice: 'fp16'"),
    (["--model", "missing.safetensors"], "--model missing.safetensors cannot be loaded"),
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
