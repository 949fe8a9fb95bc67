"""Odd image and model files (issue 15): the one image reader (files/images.py) and the safetensors
reader (files/tensors.py) read what they can exactly and refuse the rest with the file's name and a fix."""

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from onestep_sr.files.images import image_tensor, load_image, read_image, write_png
from onestep_sr.files.tensors import load_tensors, read_metadata, read_safetensors

# A minimal sRGB-class ICC header: 128 bytes, colour space signature at bytes 16..20 (ICC.1:2022, 7.2.6).
def icc_profile(space: bytes) -> bytes:
    header = bytearray(128)
    header[0:4] = (128).to_bytes(4, "big")
    header[12:16] = b"mntr"
    header[16:20] = space
    header[20:24] = b"XYZ "
    header[36:40] = b"acsp"
    return bytes(header)


def test_a_16_bit_grey_png_keeps_its_levels(tmp_path):
    levels = np.array([[0, 1000, 30000, 65535]], dtype=np.uint16)
    Image.fromarray(levels).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    image = read_image(tmp_path / "deep.png")
    assert image.shape == (1, 1, 1, 4)
    assert torch.allclose(image[0, 0, 0], torch.tensor([0, 1000, 30000, 65535]) / 65535.0)
    rgb = read_image(tmp_path / "deep.png", rgb=True)
    assert rgb.shape == (1, 3, 1, 4) and torch.equal(rgb[:, 0], rgb[:, 2]) and torch.equal(rgb[:, :1], image)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[0, 0] = 255  # a white top-left pixel
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": a phone held upright
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=100, subsampling=0)
    image = read_image(tmp_path / "phone.jpg")
    assert image.shape == (1, 3, 3, 2)  # portrait, as the photo is shown
    assert image[0, :, 0, 1].min() > 0.8  # the white pixel is now top-right
    assert image[0, :, 0, 0].max() < 0.2


def test_non_finite_pixels_are_refused_by_name(tmp_path):
    values = np.full((4, 4), 0.5, np.float32)
    values[1, 2] = np.nan
    Image.fromarray(values).save(tmp_path / "nan.tiff")
    with pytest.raises(ValueError, match=r"nan\.tiff.*1 pixel\(s\) are not finite"):
        read_image(tmp_path / "nan.tiff")


def test_a_float_image_in_range_reads_unchanged(tmp_path):
    values = np.array([[0.0, 0.25, 1.0]], np.float32)
    Image.fromarray(values).save(tmp_path / "float.tiff")
    assert torch.equal(read_image(tmp_path / "float.tiff")[0, 0, 0], torch.tensor([0.0, 0.25, 1.0]))


def test_a_decompression_bomb_is_a_value_error_naming_the_file(tmp_path, monkeypatch):
    Image.new("L", (100, 100)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10 000 px is past twice the limit
    with pytest.raises(ValueError, match=r"bomb\.png is past PIL's decompression-bomb limit.*10000 pixels"):
        read_image(tmp_path / "bomb.png")


def test_the_icc_profile_travels_to_the_png_when_its_colour_space_fits(tmp_path):
    profile = icc_profile(b"RGB ")
    Image.new("RGB", (4, 4), (10, 20, 30)).save(tmp_path / "tagged.png", icc_profile=profile)
    loaded = load_image(tmp_path / "tagged.png")
    assert loaded.icc_profile == profile
    write_png(loaded.pixels, tmp_path / "out.png", overwrite=False, icc_profile=loaded.icc_profile)
    assert Image.open(tmp_path / "out.png").info.get("icc_profile") == profile
    # a CMYK profile does not describe the RGB pixels written: it is left out
    write_png(loaded.pixels, tmp_path / "cmyk.png", overwrite=False, icc_profile=icc_profile(b"CMYK"))
    assert "icc_profile" not in Image.open(tmp_path / "cmyk.png").info


def test_non_finite_output_is_never_written(tmp_path):
    image = torch.full((1, 3, 4, 4), 0.5)
    image[0, 1, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        write_png(image, tmp_path / "out.png", overwrite=False)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("mode", ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB",
                                  "HSV", "I", "I;16", "I;16B", "F"])
def test_every_pil_mode_reads_as_grey_rgb_or_rgba_in_range(mode):
    """Some of these modes no file format stores (LAB, HSV, La, RGBa): the reader's conversion of an open
    image is tested on the image object itself."""
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 256, (6, 5, 4), dtype=np.uint8), "RGBA")
    image = base.convert(mode) if mode not in ("I;16", "I;16B") else base.convert("I").convert(mode)
    pixels = image_tensor(image)
    expected_channels = {"LA": 4, "La": 4, "PA": 4, "RGBA": 4, "RGBa": 4, "1": 1, "L": 1, "I": 1, "I;16": 1,
                         "I;16B": 1, "F": 1}.get(mode, 3)
    assert pixels.shape == (1, expected_channels, 6, 5)
    assert pixels.dtype == torch.float32 and 0 <= pixels.min() and pixels.max() <= 1
    assert image_tensor(image, rgb=True).shape == (1, 3, 6, 5)


def test_a_pickle_renamed_safetensors_is_a_value_error_naming_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    torch.save({"weight": torch.zeros(2)}, path)
    for read in (load_tensors, read_metadata, read_safetensors):
        with pytest.raises(ValueError, match=r"model\.safetensors is not a safetensors file.*pickle"):
            read(path)


def test_a_header_bomb_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "bomb.safetensors"
    path.write_bytes((2 ** 40).to_bytes(8, "little") + b"{}")  # claims a 1 TB header
    with pytest.raises(ValueError, match=r"bomb\.safetensors is not a safetensors file"):
        load_tensors(path)


def test_metadata_that_is_not_json_is_kept_as_text(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, tmp_path / "other.safetensors", metadata={"format": "pt", "n": "3"})
    assert read_metadata(tmp_path / "other.safetensors") == {"format": "pt", "n": 3}


def test_truncated_and_empty_files_name_themselves(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, "PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("cut.png", "empty.png"):
        with warnings.catch_warnings(), pytest.raises(ValueError, match=name):
            read_image(tmp_path / name)
