"""The bad-input matrix (issue 15): odd images, NaN / infinite tensors, broken and disguised files, paths that
leave ComfyUI's folders, every numeric widget at its ends and unknown enum values, through a real ComfyUI server
and through the CLI (its `main`, in this process). tests/test_bad_inputs.py and benchmarks/robustness.py run it.

Each `Case` either succeeds with a sane result (`sane` says what that is; `check` tests it) or is refused
with an error holding every one of `words` (the input's name and the fix). After every server case the server
must still serve (`Matrix.healthy`), and no case may leave a partial file (a `.tmp`) or, when refused, any new
file in the output and model folders.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..cli import DEFAULT_MODEL, main as cli_main
from ..files.tensors import read_tensor_file
from . import comfy_host as host_lib
from .probe_nodes import odd_tensor

WATCHED = ("output", "models/loras", "models/onestep_sr", "temp")  # folders a refused case must leave as they were
SEED_MAX = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class Case:
    name: str
    surface: str                       # "server" or "cli"
    build: Callable                    # server: build(matrix) -> API prompt; cli: build(matrix, folder) -> argv
    words: tuple[str, ...] = ()        # refused: what the error must say; empty: the case must succeed
    sane: str = ""                     # succeeds: what a sane result is
    check: Callable | None = None      # succeeds: check(matrix, outcome) raises AssertionError unless sane
    heavy: bool = False                # gigabytes of memory or minutes: the benchmark runs it, the tests do not

    @property
    def refused(self) -> bool:
        return bool(self.words)


@dataclass
class Outcome:
    case: str
    surface: str
    expected: str                      # "refused" or "succeeds"
    got: str                           # "refused", "succeeds" or "crashed"
    message: str                       # the error (or the CLI's stderr), whitespace folded
    passed: bool
    problem: str = ""                  # why not, when not passed


@dataclass
class Result:
    """What one run of a case gave, for its check: the saved images' bytes (server) or the written file names
    and their folder (CLI)."""

    outputs: list
    folder: Path | None = None
    ui: dict = field(default_factory=dict)  # server: each output node's ui entry in /history


# ---------------------------------------------------------------- files


def bad_file(kind: str, path: Path, valid: Path | None = None) -> Path:
    """A broken file of `kind` at `path`: corrupt (random bytes), truncated (half of the file `valid`), empty,
    pickle (a torch.save pickle under a .safetensors name), header_bomb (a safetensors header claiming 1 TB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "corrupt":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        data = valid.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "pickle":
        torch.save({"weight": torch.zeros(4)}, path)
    elif kind == "header_bomb":
        path.write_bytes((2 ** 40).to_bytes(8, "little") + b"{}")
    else:
        raise ValueError(f"unknown bad file kind {kind!r}")
    return path


def default_model_lora(path: Path, rank: int = 2, wrong_rank: bool = False, other_family: bool = False) -> Path:
    """A ComfyUI LoRA file for the default model's first block (up matrices of a wrong shape when `wrong_rank`;
    an SD3 transformer's keys when `other_family`)."""
    from safetensors.torch import save_file

    weights, _ = read_tensor_file(DEFAULT_MODEL)
    tensors = {}
    for name in ("blocks.0.conv1", "blocks.0.conv2"):
        out_channels, in_channels, kh, kw = weights[f"{name}.weight"].shape
        key = ("diffusion_model.joint_blocks.0.x_block.attn.qkv" if other_family and name.endswith("conv1")
               else f"diffusion_model.net.{name}")
        tensors[f"{key}.lora_down.weight"] = torch.randn(rank, in_channels, kh, kw) * 0.01
        tensors[f"{key}.lora_up.weight"] = torch.randn(out_channels + (3 if wrong_rank else 0), rank, 1, 1) * 0.01
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path)
    return path


def image_file(path: Path, width: int, height: int, mode: str = "RGB", **save) -> Path:
    """A smooth seeded image of `mode` (I;16: 16-bit levels; P: with a transparent palette entry)."""
    rng = np.random.default_rng(width * 1000 + height)
    coarse = rng.integers(0, 256, (max(1, height // 4), max(1, width // 4), 3)).astype(np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    if mode == "I;16":
        levels = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        image = Image.fromarray(levels)
    elif mode == "P":
        image = image.convert("P")
        save.setdefault("transparency", 0)
    elif mode in ("RGBA", "LA"):  # an alpha that is not all opaque (an opaque one, WebP leaves out)
        image = image.convert(mode)
        image.putalpha(Image.linear_gradient("L").resize((width, height)))
    elif mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **save)
    return path


def huge_png(path: Path, width: int, height: int) -> Path:
    """A grey PNG of width x height that is tiny on disk (all zeros)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("1", (width, height)).save(path)
    return path


def float_tiff(path: Path, value: float) -> Path:
    values = np.full((12, 16), 0.5, np.float32)
    values[3, 4] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values).save(path)
    return path


# ---------------------------------------------------------------- prompts


UPSCALE_DEFAULTS = dict(scale_by=2.0, steps=1, family="auto", start_mode="lr", t_start=1.0, shift=1.0, gamma=0.0,
                        bridge_scale=1.0, guidance=1.0, seed=0, upscale_method="bicubic", tile_size=0,
                        vae_tile_size=1024, colour_fix="none")
TRAIN_DEFAULTS = dict(lora_name="matrix", steps=1, batch_size=1, crop_size=32, scale=4, rank=2, learning_rate=1e-4,
                      adversarial_weight=0.1, discriminator="patch", seed=0, overwrite=True)


def odd_image(graph, width=16, height=16, channels=3, batch=1, value="none", count=0, seed=0):
    return graph.node("ProbeOddImage", width=width, height=height, channels=channels, batch=batch, value=value,
                      count=count, seed=seed)


def default_model(graph, name=DEFAULT_MODEL.name):
    return graph.node("OneStepSR_LoadModel", model_name=name)


def upscale_prompt(image=None, model_name=DEFAULT_MODEL.name, prefix="matrix", **widgets):
    """Load OneStep SR Model -> OneStep SR Upscale(image: a ProbeOddImage spec or a LoadImage file name) -> SaveImage."""
    graph = host_lib.new_graph()
    loader = default_model(graph, model_name)
    if isinstance(image, str):
        source = graph.node("LoadImage", image=image)
    else:
        source = odd_image(graph, **(image or {}))
    upscale = graph.node("OneStepSR_Upscale", model=loader.out(0), vae=loader.out(1), image=source.out(0),
                         **{**UPSCALE_DEFAULTS, **widgets})
    graph.node("SaveImage", images=upscale.out(0), filename_prefix=prefix)
    return graph.finalize()


def train_prompt(images=None, folder=None, **widgets):
    graph = host_lib.new_graph()
    loader = default_model(graph)
    inputs = {**TRAIN_DEFAULTS, **widgets}
    if images is not None:
        inputs["images"] = odd_image(graph, **images).out(0)
    if folder is not None:
        inputs["folder"] = folder
    train = graph.node("OneStepSR_TrainLoRA", model=loader.out(0), vae=loader.out(1), **inputs)
    graph.node("SaveImage", images=train.out(1), filename_prefix="loss_plot")
    return graph.finalize()


FTD_DEFAULTS = dict(lora_name="matrix_ftd", steps=1, batch_size=1, rank=2, learning_rate=1e-4, lr_time=0.5, sign="+1",
                    diversification_weight=0.0, seed=0, overwrite=True)


def ftd_prompt(pairs: str, **widgets):
    """Train FTD LoRA on the default model's MODEL (refused before any model is needed) -> its loss plot."""
    graph = host_lib.new_graph()
    train = graph.node("OneStepSR_TrainFTDLoRA", model=default_model(graph).out(0), pairs=pairs,
                       **{**FTD_DEFAULTS, **widgets})
    graph.node("SaveImage", images=train.out(1), filename_prefix="loss_plot")
    return graph.finalize()


def dual_branch_prompt():
    """OneStep SR Dual-Branch Patch on the default model (not a native DiT) -> the one-click node."""
    graph = host_lib.new_graph()
    loader = default_model(graph)
    patched = graph.node("OneStepSR_DualBranchPatch", model=loader.out(0))
    upscale = graph.node("OneStepSR_Upscale", model=patched.out(0), vae=loader.out(1), image=odd_image(graph).out(0),
                         **UPSCALE_DEFAULTS)
    graph.node("SaveImage", images=upscale.out(0), filename_prefix="matrix")
    return graph.finalize()


def adapter_prompt(adapter_name, **widgets):
    graph = host_lib.new_graph()
    loader = default_model(graph)
    adapter = graph.node("OneStepSR_LoadAdapter", model=loader.out(0), vae=loader.out(1), adapter_name=adapter_name,
                         **{"strength": 1.0, "format": "auto", "on_problem": "error", **widgets})
    upscale = graph.node("OneStepSR_Upscale", model=adapter.out(0), vae=adapter.out(1),
                         image=odd_image(graph).out(0), **UPSCALE_DEFAULTS)
    graph.node("SaveImage", images=upscale.out(0), filename_prefix="matrix")
    return graph.finalize()


def colour_fix_prompt(image, reference, method="wavelet"):
    """ColourFix -> ProbePeakRSS, which lists the IMAGE's shape (SaveImage cannot save a 1-channel IMAGE)."""
    graph = host_lib.new_graph()
    fixed = graph.node("OneStepSR_ColourFix", image=odd_image(graph, **image).out(0),
                       reference=odd_image(graph, **reference).out(0), method=method)
    graph.node("ProbePeakRSS", image=fixed.out(0))
    return graph.finalize()


def conditioning_prompt(image, **widgets):
    graph = host_lib.new_graph()
    loader = default_model(graph)
    conditioning = graph.node("OneStepSR_Conditioning", image=odd_image(graph, **image).out(0), vae=loader.out(1),
                              **{"scale_by": 2.0, "width": 0, "height": 0, "upscale_method": "bicubic",
                                 "lr_as_reference": False, "vae_tile_size": 1024, **widgets})
    decoded = graph.node("OneStepSR_Decode", samples=conditioning.out(2), vae=loader.out(1), vae_tile_size=1024)
    graph.node("SaveImage", images=decoded.out(0), filename_prefix="matrix")
    return graph.finalize()


def decode_prompt(latent):
    graph = host_lib.new_graph()
    loader = default_model(graph)
    latent = {"width": 16, "height": 16, "channels": 3, "value": "nan", "count": 1, **latent}
    decoded = graph.node("OneStepSR_Decode", samples=graph.node("ProbeOddLatent", **latent).out(0),
                         vae=loader.out(1), vae_tile_size=1024)
    graph.node("SaveImage", images=decoded.out(0), filename_prefix="matrix")
    return graph.finalize()


# ---------------------------------------------------------------- sanity checks


def saved_size(width: int, height: int, mode: str | None = None):
    """check: the prompt saved one image of width x height (and PIL mode `mode`) whose pixels are not all equal."""

    def check(matrix, result):
        assert len(result.outputs) == 1, f"expected one saved image, got {len(result.outputs)}"
        with Image.open(io.BytesIO(result.outputs[0])) as image:
            assert image.size == (width, height), f"saved {image.size}, expected {(width, height)}"
            assert mode is None or image.mode == mode, f"saved mode {image.mode}, expected {mode}"
    return check


def near_bicubic(spec: dict, scale: int, tolerance: float = 0.12):
    """check: the saved upscale of ProbeOddImage `spec` is its size x scale and within `tolerance` mean absolute
    difference of its bicubic upscale (a sane SR output is close to the enlarged input)."""
    import torch.nn.functional as F

    def check(matrix, result):
        pixels = odd_tensor((1, spec.get("height", 16), spec.get("width", 16), spec.get("channels", 3)), "none", 0,
                            spec.get("seed", 0))
        expected = F.interpolate(pixels.movedim(-1, 1), scale_factor=scale, mode="bicubic").clamp(0, 1)[0]
        with Image.open(io.BytesIO(result.outputs[0])) as image:
            saved = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).movedim(-1, 0)
        assert saved.shape == expected.shape, f"saved {tuple(saved.shape)}, expected {tuple(expected.shape)}"
        error = float((saved - expected).abs().mean())
        assert error < tolerance, f"mean |SR - bicubic| = {error:.3f} >= {tolerance}"
    return check


def image_shape(*shape: int):
    """check: the probe node saw an IMAGE of `shape`."""

    def check(matrix, result):
        shapes = [node["shape"][0] for node in result.ui.values() if "shape" in node]
        assert shapes == [list(shape)], f"IMAGE shapes {shapes}, expected {list(shape)}"
    return check


def lora_saved(name: str):
    def check(matrix, result):
        path = matrix.base / "models" / "loras" / f"{name}.safetensors"
        assert path.is_file(), f"{path} was not written"
    return check


def cli_wrote(*names: str, size: tuple[int, int] | None = None, mode: str | None = None):
    def check(matrix, result):
        assert sorted(result.outputs) == sorted(names), f"wrote {result.outputs}, expected {list(names)}"
        if size or mode:
            with Image.open(result.folder / names[0]) as image:
                assert size is None or image.size == size, f"wrote {image.size}, expected {size}"
                assert mode is None or image.mode == mode, f"wrote mode {image.mode}, expected {mode}"
    return check


# ---------------------------------------------------------------- the cases


def server_cases() -> list[Case]:
    S = "server"
    sane_size = "the requested size, close to bicubic (mean |SR - bicubic| < 0.12)"
    cases = [
        # image sizes
        Case("image 0 px wide", S, lambda m: upscale_prompt({"width": 0, "height": 8}), ("image", "empty")),
        Case("image 1x1 px", S, lambda m: upscale_prompt({"width": 1, "height": 1}, scale_by=4.0),
             sane="a 4x4 image", check=saved_size(4, 4)),
        Case("image 1x300 px", S, lambda m: upscale_prompt({"width": 1, "height": 300}, scale_by=4.0),
             sane="a 4x1200 image", check=saved_size(4, 1200)),
        Case("image past PIL's bomb limit (LoadImage)", S,
             lambda m: upscale_prompt(m.input_file("bomb.png", lambda p: huge_png(p, 14000, 14000))),
             ("decompression bomb",)),
        Case("output past free memory (scale_by 16 of 4096x4096)", S,
             lambda m: upscale_prompt({"width": 4096, "height": 4096}, scale_by=16.0),
             ("scale_by 16", "65536x65536", "MB of memory", "lower scale_by")),
        Case("output past free memory (width/height 16384, batch 16)", S,
             lambda m: conditioning_prompt({"width": 8, "height": 8, "batch": 16}, width=16384, height=16384),
             ("width 16384 x height 16384", "batch 16", "MB of memory")),
        # image modes (LoadImage makes RGB of them; the one-click node must take what it makes)
        *[Case(f"mode {mode} through LoadImage", S,
               lambda m, mode=mode, suffix=suffix: upscale_prompt(
                   m.input_file(f"mode_{mode.replace(';', '_')}.{suffix}",
                                lambda p, mode=mode: image_file(p, 24, 16, mode))),
               sane="a 48x32 RGB image", check=saved_size(48, 32, "RGB"))
          for mode, suffix in (("L", "png"), ("LA", "png"), ("P", "png"), ("I;16", "png"), ("CMYK", "jpg"))],
        Case("grey 1-channel IMAGE", S, lambda m: upscale_prompt({"channels": 1}),
             sane="a 32x32 image", check=saved_size(32, 32)),
        Case("grey + alpha 2-channel IMAGE", S, lambda m: upscale_prompt({"channels": 2}),
             sane="a 32x32 image", check=saved_size(32, 32)),
        Case("RGBA IMAGE", S, lambda m: upscale_prompt({"channels": 4}),
             sane="a 32x32 RGBA image", check=saved_size(32, 32, "RGBA")),
        # NaN / infinity into every IMAGE and LATENT input
        Case("NaN into Upscale.image", S, lambda m: upscale_prompt({"value": "nan", "count": 3}),
             ("image holds 3 NaN or infinite values", "fix or replace the node")),
        Case("infinity into Upscale.image", S, lambda m: upscale_prompt({"value": "inf", "count": 1}),
             ("image holds 1 NaN or infinite value",)),
        Case("NaN into Conditioning.image", S, lambda m: conditioning_prompt({"value": "nan", "count": 2}),
             ("image holds 2 NaN",)),
        Case("NaN into ColourFix.image", S,
             lambda m: colour_fix_prompt({"value": "nan", "count": 1, "width": 32, "height": 32}, {}),
             ("image holds 1 NaN",)),
        Case("-infinity into ColourFix.reference", S,
             lambda m: colour_fix_prompt({"width": 32, "height": 32}, {"value": "-inf", "count": 5}),
             ("reference holds 5 NaN or infinite values",)),
        Case("NaN into Decode.samples", S, lambda m: decode_prompt({"value": "nan", "count": 4}),
             ("samples holds 4 NaN", "lower the guidance")),
        Case("NaN into TrainLoRA.images", S,
             lambda m: train_prompt(images={"value": "nan", "count": 1, "width": 40, "height": 40}),
             ("images holds 1 NaN",)),
        Case("grey IMAGE into ColourFix with an RGB reference", S,
             lambda m: colour_fix_prompt({"channels": 1, "width": 32, "height": 32}, {}),
             sane="a 32x32 grey IMAGE (1 channel)", check=image_shape(1, 32, 32, 1)),
        # model files
        *[Case(f"{kind} model file", S, lambda m, kind=kind: upscale_prompt(
            {}, model_name=m.model_file(f"{kind}.safetensors", kind)),
            (f"{kind}.safetensors is not a safetensors file", "convert it"))
          for kind in ("corrupt", "truncated", "empty", "pickle", "header_bomb")],
        Case("a LoRA given as the model", S,
             lambda m: upscale_prompt({}, model_name=m.model_file("lora_as_model.safetensors", "lora")),
             ("no 'onestep_sr_config' metadata", "not a OneStep SR default model file")),
        Case("model name with ../", S, lambda m: upscale_prompt({}, model_name="../../../etc/passwd"),
             ("model_name", "not in")),
        # adapter files
        *[Case(f"{kind} adapter file", S, lambda m, kind=kind: adapter_prompt(m.lora_file(f"{kind}_lora.safetensors", kind)),
               (f"{kind}_lora.safetensors is not a safetensors file", "convert it"))
          for kind in ("corrupt", "truncated", "empty", "pickle", "header_bomb")],
        Case("pickle as the VAE adapter", S, lambda m: adapter_prompt(
            m.lora_file("good_lora.safetensors", "lora"), vae_adapter_name=m.lora_file("vae_pickle.safetensors", "pickle")),
            ("vae_pickle.safetensors is not a safetensors file",)),
        Case("a LoRA of another model family", S,
             lambda m: adapter_prompt(m.lora_file("sd3_lora.safetensors", "other_family")),
             ("unknown", "joint_blocks", "on_problem")),
        Case("a LoRA of the wrong rank / shape", S,
             lambda m: adapter_prompt(m.lora_file("wrong_rank.safetensors", "wrong_rank")),
             ("shape", "on_problem")),
        Case("a broken adapter_config.json beside a PEFT file", S,
             lambda m: adapter_prompt(m.peft_folder_with_broken_config()),
             ("adapter_config.json is not valid JSON", "delete it")),
        Case("FlowSR metadata that is a JSON list", S, lambda m: adapter_prompt(m.lora_file("flowsr_list.safetensors", "flowsr_list")),
             ("flowsr_checkpoint_metadata", "must be a JSON object")),
        Case("a good LoRA (control)", S, lambda m: adapter_prompt(m.lora_file("good_lora.safetensors", "lora")),
             sane="the upscale runs with it"),
        # paths from the workflow
        Case("training folder ../", S, lambda m: train_prompt(folder="../"), ("folder", "outside ComfyUI's input folder")),
        Case("training folder /etc", S, lambda m: train_prompt(folder="/etc"), ("folder", "outside ComfyUI's input folder")),
        Case("training folder that does not exist", S, lambda m: train_prompt(folder="no_such_folder"),
             ("no_such_folder does not exist",)),
        Case("training folder with a corrupt image", S, lambda m: train_prompt(folder=m.hr_folder("corrupt_hr", broken=True)),
             ("broken.png cannot be read as an image",)),
        Case("lora_name ../escape", S, lambda m: train_prompt(images={"width": 40, "height": 40}, lora_name="../escape"),
             ("lora_name must be a plain file name",)),
        Case("lora_name /tmp/absolute", S,
             lambda m: train_prompt(images={"width": 40, "height": 40}, lora_name="/tmp/absolute"),
             ("lora_name must be a plain file name",)),
        # numeric widgets at their ends
        Case("scale_by at its minimum 1", S, lambda m: upscale_prompt({}, scale_by=1.0),
             sane="the input's 16x16 size", check=saved_size(16, 16)),
        Case("scale_by at its maximum 16", S, lambda m: upscale_prompt({"width": 8, "height": 8}, scale_by=16.0),
             sane="a 128x128 image", check=saved_size(128, 128)),
        Case("scale_by above its maximum", S, lambda m: upscale_prompt({}, scale_by=1000.0),
             ("scale_by", "bigger than max")),
        Case("steps at its maximum 1000", S, lambda m: upscale_prompt({"width": 8, "height": 8}, steps=1000),
             sane="a 16x16 image", check=saved_size(16, 16)),
        Case("steps 0 (below its minimum)", S, lambda m: upscale_prompt({}, steps=0), ("steps", "smaller than min")),
        Case("t_start at its minimum with start mode lr", S, lambda m: upscale_prompt({}, t_start=0.001),
             ("start mode 'lr' starts at t = 1", "lr_at_T")),
        Case("t_start at its minimum with start mode lr_at_T", S,
             lambda m: upscale_prompt({}, t_start=0.001, start_mode="lr_at_T"), sane=sane_size,
             check=near_bicubic({}, 2)),
        Case("shift at its minimum 0.01", S, lambda m: upscale_prompt({}, steps=2, shift=0.01), sane=sane_size,
             check=near_bicubic({}, 2)),
        Case("shift at its maximum 100", S, lambda m: upscale_prompt({}, steps=2, shift=100.0), sane=sane_size,
             check=near_bicubic({}, 2)),
        Case("gamma at its maximum 1 with the largest seed", S,
             lambda m: upscale_prompt({}, steps=3, gamma=1.0, seed=SEED_MAX),
             sane="a 32x32 image (fresh noise in place of the LR source is outside what the default model learned)",
             check=saved_size(32, 32)),
        Case("guidance at its minimum 0", S, lambda m: upscale_prompt({}, guidance=0.0), sane=sane_size,
             check=near_bicubic({}, 2, tolerance=0.2)),
        Case("guidance at its maximum 30", S, lambda m: upscale_prompt({}, guidance=30.0),
             sane="a 32x32 image (guidance this strong may overshoot)", check=saved_size(32, 32)),
        Case("bridge_scale at its maximum 10", S, lambda m: upscale_prompt({}, start_mode="bridge", t_start=0.5,
                                                                            bridge_scale=10.0),
             sane="a 32x32 image", check=saved_size(32, 32)),
        Case("tile_size at its maximum 16384", S, lambda m: upscale_prompt({}, tile_size=16384), sane=sane_size,
             check=near_bicubic({}, 2)),
        Case("tile_size 8 (below the smallest tile)", S, lambda m: upscale_prompt({}, tile_size=8),
             ("tile_size 8 px is below the smallest tile", "raise it")),
        Case("tile_overlap at its maximum 1024", S, lambda m: upscale_prompt({}, tile_size=128, tile_overlap=1024),
             ("tile_size 128 px is below the smallest tile", "lower tile_overlap")),
        *[Case(f"vae_tile_size {size}", S, lambda m, size=size: upscale_prompt({"width": 48, "height": 40}, vae_tile_size=size),
               sane=sane_size, check=near_bicubic({"width": 48, "height": 40}, 2))
          for size in (64, 128, 8192)],
        Case("Train SR LoRA crop_size above the images", S,
             lambda m: train_prompt(images={"width": 40, "height": 40}, crop_size=1024, scale=4),
             ("smaller than crop_size 1024", "lower crop_size to 40")),
        Case("Train SR LoRA crop_size not a multiple of scale", S,
             lambda m: train_prompt(images={"width": 40, "height": 40}, crop_size=36, scale=8),
             ("crop_size 36 must be a multiple of scale 8",)),
        Case("Train SR LoRA at the widgets' ends (steps 1, rank 256, lr 0.1, crop 16)", S,
             lambda m: train_prompt(images={"width": 40, "height": 40}, lora_name="ends", rank=256, learning_rate=0.1,
                                    crop_size=16, scale=2),
             sane="a LoRA file", check=lora_saved("ends")),
        Case("Train SR LoRA on a grey IMAGE batch", S,
             lambda m: train_prompt(images={"width": 40, "height": 40, "channels": 1}, lora_name="grey"),
             sane="a LoRA file", check=lora_saved("grey")),
        Case("Train SR LoRA again under the same lora_name with another rank", S,
             lambda m: train_prompt(images={"width": 40, "height": 40}, lora_name=m.finished_run("refit"),
                                    rank=TRAIN_DEFAULTS["rank"] * 2),
             ("holds the checkpoint of an earlier run under this lora_name", "choose another lora_name")),
        # the native-model nodes (FLUX, SD3, Qwen-Image, Z-Image) given what they cannot take
        Case("Dual-Branch Patch on the default model", S, lambda m: dual_branch_prompt(),
             ("Dual-Branch Patch", "FlowMapSRDiffusionModel", "connect one of those")),
        Case("family dual_branch on an unpatched MODEL", S, lambda m: upscale_prompt({}, family="dual_branch"),
             ("family 'dual_branch'", "OneStep SR Dual-Branch Patch", "set the sampler's family to 'auto'")),
        Case("Train FTD LoRA with pairs '../escape'", S, lambda m: ftd_prompt("../escape"),
             ("pairs", "plain folder name", "'../escape'")),
        Case("Train FTD LoRA with a pairs folder never written", S, lambda m: ftd_prompt("never_written"),
             ("holds no teacher pairs", "run 'OneStep SR Teacher Pairs'", "'never_written'")),
        # unknown enum values
        *[Case(f"unknown {name}", S, lambda m, name=name: upscale_prompt({}, **{name: "bogus"}),
               (name, "not in"))
          for name in ("family", "start_mode", "upscale_method", "colour_fix")],
        Case("unknown discriminator", S, lambda m: train_prompt(images={}, discriminator="bogus"),
             ("discriminator", "not in")),
        Case("unknown adapter format", S,
             lambda m: adapter_prompt(m.lora_file("good_lora.safetensors", "lora"), format="bogus"), ("format", "not in")),
    ]
    cases.append(Case("image between PIL's bomb limit and twice it (LoadImage decodes 100 Mpx)", S,
                      lambda m: upscale_prompt(m.input_file("big.png", lambda p: huge_png(p, 10000, 10000)),
                                               scale_by=16.0),
                      ("scale_by 16", "MB of memory"), heavy=True))
    return cases


def cli_cases() -> list[Case]:
    C = "cli"

    def files(*specs):
        """argv of the CLI on image files made by specs [(name, maker)] in the case's folder, into folder/out."""
        def build(matrix, folder):
            return [str(maker(folder / name)) for name, maker in specs] + ["-o", str(folder / "out")]
        return build

    png = lambda w, h, mode="RGB": (lambda p: image_file(p, w, h, mode))
    one = files(("a.png", png(12, 10)))
    with_flags = lambda *flags: (lambda m, f: one(m, f) + list(flags))
    model = lambda kind: (lambda m, f: one(m, f) + ["--model", str(m.model_file_at(f / f"{kind}.safetensors", kind))])
    cases = [
        Case("empty file", C, files(("empty.png", lambda p: bad_file("empty", p))), ("empty.png", "cannot be read")),
        Case("corrupt file", C, files(("corrupt.png", lambda p: bad_file("corrupt", p))), ("corrupt.png", "cannot be read")),
        Case("truncated PNG", C, files(("cut.png", truncated_png)), ("cut.png", "cannot be read")),
        Case("1x1 image", C, files(("dot.png", png(1, 1))), sane="a 4x4 PNG", check=cli_wrote("dot_x4.png", size=(4, 4))),
        Case("1x300 image", C, files(("line.png", png(1, 300))), sane="a 4x1200 PNG",
             check=cli_wrote("line_x4.png", size=(4, 1200))),
        Case("image past PIL's bomb limit, then a good one", C,
             files(("a_bomb.png", lambda p: huge_png(p, 14000, 14000)), ("b.png", png(12, 10))),
             ("a_bomb.png is past PIL's decompression-bomb limit", "downscale or crop")),
        *[Case(f"mode {mode} ({suffix})", C, files((f"m.{suffix}", png(12, 10, mode))), sane=f"a 48x40 {out} PNG",
               check=cli_wrote("m_x4.png", size=(48, 40), mode=out))
          for mode, suffix, out in (("L", "png", "L"), ("LA", "png", "RGBA"), ("P", "png", "RGBA"), ("I;16", "png", "L"),
                                    ("CMYK", "jpg", "RGB"), ("RGBA", "webp", "RGBA"), ("RGB", "bmp", "RGB"),
                                    ("RGB", "tiff", "RGB"))],
        Case("NaN pixel (float TIFF)", C, files(("nan.tiff", lambda p: float_tiff(p, float("nan")))),
             ("nan.tiff", "1 pixel(s) are not finite")),
        Case("infinite pixel (float TIFF)", C, files(("inf.tiff", lambda p: float_tiff(p, float("inf")))),
             ("inf.tiff", "not finite")),
        *[Case(f"--model {kind}", C, model(kind), ("--model", "cannot be loaded", "is not a safetensors file"))
          for kind in ("corrupt", "truncated", "empty", "pickle", "header_bomb")],
        Case("--model a LoRA file", C, model("lora"), ("--model", "not a OneStep SR default model file")),
        Case("--model that does not exist", C, with_flags("--model", "/nonexistent/model.safetensors"),
             ("--model /nonexistent/model.safetensors cannot be loaded",)),
        Case("--guidance nan", C, with_flags("--guidance", "nan"), ("--guidance must be a finite number >= 0",)),
        Case("--guidance inf", C, with_flags("--guidance", "inf"), ("--guidance must be a finite number >= 0",)),
        Case("--guidance -1", C, with_flags("--guidance", "-1"), ("--guidance must be a finite number >= 0",)),
        Case("--guidance at 30", C, with_flags("--guidance", "30"), sane="a 48x40 PNG",
             check=cli_wrote("a_x4.png", size=(48, 40))),
        Case("--seed 2^64", C, with_flags("--seed", str(2 ** 64)), ("--seed must lie in [0, 2^64 - 1]",)),
        Case("--seed 2^64 - 1", C, with_flags("--seed", str(2 ** 64 - 1)), sane="a 48x40 PNG",
             check=cli_wrote("a_x4.png", size=(48, 40))),
        Case("--steps 0", C, with_flags("--steps", "0"), ("--steps must be at least 1",)),
        Case("--tile 1", C, with_flags("--tile", "1"), ("--tile must be 0 (automatic) or at least 32",)),
        Case("--tile 32 (its minimum, tiled)", C, lambda m, f: files(("wide.png", png(100, 40)))(m, f) + ["--tile", "32"],
             sane="a 400x160 PNG", check=cli_wrote("wide_x4.png", size=(400, 160))),
        Case("--scale 3 (unknown choice)", C, with_flags("--scale", "3"), ("--scale", "invalid choice")),
        Case("--precision half (unknown choice)", C, with_flags("--precision", "half"), ("--precision", "invalid choice")),
        Case("--precision fp16 (on a CPU: its fp16 autocast)", C, with_flags("--precision", "fp16", "--device", "cpu"),
             sane="a 48x40 PNG", check=cli_wrote("a_x4.png", size=(48, 40))),
        Case("--device gpu (unknown choice)", C, with_flags("--device", "gpu"), ("--device", "invalid choice")),
        Case("-o out.png with two inputs", C,
             lambda m, f: files(("a.png", png(12, 10)), ("b.png", png(12, 10)))(m, f)[:-1] + [str(f / "out" / "x.png")],
             ("names one PNG file, but 2 images",)),
        Case("-o out.jpg", C, lambda m, f: one(m, f)[:-1] + [str(f / "out" / "x.jpg")], ("outputs are PNG files",)),
        Case("a/x.png and b/x.png", C, files(("a/x.png", png(12, 10)), ("b/x.png", png(12, 10))),
             ("would all be written to", "x_x4.png", "rename them")),
        Case("x.png and x.jpg", C, files(("x.png", png(12, 10)), ("x.jpg", png(12, 10))),
             ("would all be written to", "x_x4.png")),
        Case("an input that does not exist", C, lambda m, f: [str(f / "missing.png"), "-o", str(f / "out")],
             ("missing.png' does not exist",)),
        Case("a folder without images", C, lambda m, f: [str(empty_folder(f)), "-o", str(f / "out")],
             ("no images",)),
        Case("output exists without --overwrite", C, lambda m, f: one(m, f) + earlier_output(f),
             ("exists; pass --overwrite",)),
        Case("EXIF-rotated phone photo", C, files(("phone.jpg", rotated_jpeg)),
             sane="a 40x48 PNG (portrait, as shown)", check=cli_wrote("phone_x4.png", size=(40, 48))),
    ]
    return cases


def truncated_png(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def empty_folder(folder: Path) -> Path:
    (folder / "nothing").mkdir(exist_ok=True)
    return folder / "nothing"


def earlier_output(folder: Path) -> list[str]:
    """No more arguments: the output a.png would go to already holds earlier work."""
    (folder / "out").mkdir(exist_ok=True)
    (folder / "out" / "a_x4.png").write_bytes(b"earlier work")
    return []


def rotated_jpeg(path: Path) -> Path:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    image_file(path, 12, 10, "RGB", exif=exif, quality=95)
    return path


# ---------------------------------------------------------------- running it


class Matrix:
    """Runs cases against `server` (a ComfyServer) and the CLI, with files under `work`."""

    def __init__(self, server, work: Path):
        self.server, self.base, self.work = server, Path(server.base), Path(work)
        self.count = 0

    # files the cases refer to (made once, named by the case)
    def input_file(self, name: str, make) -> str:
        path = self.base / "input" / name
        if not path.exists():
            make(path)
        return name

    def model_file_at(self, path: Path, kind: str) -> Path:
        if not path.exists():
            if kind == "lora":
                default_model_lora(path)
            else:
                bad_file(kind, path, valid=DEFAULT_MODEL)
        return path

    def model_file(self, name: str, kind: str) -> str:
        self.model_file_at(self.base / "models" / "onestep_sr" / name, kind)
        return name

    def lora_file(self, name: str, kind: str) -> str:
        path = self.base / "models" / "loras" / name
        if not path.exists():
            if kind in ("lora", "other_family", "wrong_rank"):
                default_model_lora(path, wrong_rank=kind == "wrong_rank", other_family=kind == "other_family")
            elif kind == "flowsr_list":
                from safetensors.torch import save_file
                save_file({"t": torch.zeros(2, 2)}, path, metadata={"flowsr_checkpoint_metadata": json.dumps([1, 2])})
            else:
                bad_file(kind, path, valid=default_model_lora(path.with_name(".valid_" + name)))
                path.with_name(".valid_" + name).unlink()
        return name

    def peft_folder_with_broken_config(self) -> str:
        folder = self.base / "models" / "loras" / "broken_peft"
        if not folder.exists():
            from safetensors.torch import save_file
            folder.mkdir(parents=True)
            weights, _ = read_tensor_file(DEFAULT_MODEL)
            out_channels, in_channels, kh, kw = weights["blocks.0.conv1.weight"].shape
            save_file({"base_model.model.blocks.0.conv1.lora_A.weight": torch.zeros(2, in_channels, kh, kw),
                       "base_model.model.blocks.0.conv1.lora_B.weight": torch.zeros(out_channels, 2, 1, 1)},
                      folder / "adapter_model.safetensors")
            (folder / "adapter_config.json").write_text('{"r": 2, "lora_alpha": ')
        return "broken_peft/adapter_model.safetensors"

    def hr_folder(self, name: str, broken: bool = False) -> str:
        folder = self.base / "input" / name
        if not folder.exists():
            image_file(folder / "good.png", 48, 48)
            if broken:
                bad_file("corrupt", folder / "broken.png")
        return name

    def finished_run(self, lora_name: str) -> str:
        """A Train SR LoRA run under `lora_name` with the matrix's settings, run before the case (its files are
        the case's starting point, not its output)."""
        if not (self.base / "output" / "onestep_sr_training" / lora_name).exists():
            entry = self.server.run(train_prompt(images={"width": 40, "height": 40}, lora_name=lora_name), timeout=600)
            if entry["status"]["status_str"] != "success":
                raise RuntimeError(f"the run before the case failed: {host_lib.history_error(entry)}")
        return lora_name

    # checks between cases
    def snapshot(self) -> set[Path]:
        return {path for sub in WATCHED for path in (self.base / sub).rglob("*") if path.is_file()}

    def partial_files(self) -> list[Path]:
        return sorted(path for path in self.base.rglob("*.tmp")) + sorted(self.work.rglob("*.tmp"))

    def healthy(self) -> str:
        """'' when the server still runs a small default-model upscale, else why not."""
        try:
            entry = self.server.run(upscale_prompt({"width": 8, "height": 8, "seed": self.count}, prefix="healthy"))
        except Exception as error:  # the server is gone or answers nonsense: that is the finding
            return f"the next prompt failed: {error}"
        error = host_lib.history_error(entry)
        return "" if entry["status"]["status_str"] == "success" else f"the next prompt failed: {error}"

    def run_server(self, case: Case) -> Outcome:
        self.count += 1
        prompt = case.build(self)
        before = self.snapshot()
        outputs, message = [], ""
        try:
            entry = self.server.run(prompt, timeout=600)
        except host_lib.ServerError as error:  # refused by ComfyUI's validation: node_errors name the input
            got, message = "refused", error.body
        else:
            failure = host_lib.history_error(entry)
            if entry["status"]["status_str"] == "success":
                got = "succeeds"
                for node in entry["outputs"].values():
                    outputs += [self.server.view(image) for image in node.get("images", []) if image["type"] == "output"]
            elif failure is not None:
                got, message = "refused", f"{failure['exception_type']}: {failure['exception_message']}"
            else:
                got, message = "crashed", json.dumps(entry["status"])
        problems = self.judge(case, got, message, Result(outputs, ui=entry["outputs"] if got == "succeeds" else {}))
        left = [path for path in sorted(self.snapshot() - before) if path.relative_to(self.base).parts[0] != "temp"]
        if case.refused and left:
            problems.append(f"a refused case left files: {[str(p.relative_to(self.base)) for p in left][:4]}")
        problems += [f"partial file {path}" for path in self.partial_files()]
        health = self.healthy()
        if health:
            problems.append(health)
        return outcome(case, got, message, problems)

    def run_cli(self, case: Case) -> Outcome:
        self.count += 1
        folder = self.work / f"cli_{self.count:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        argv = case.build(self, folder)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli_main(["upscale", *argv])
            except SystemExit as exit_:
                code = exit_.code
            except Exception as error:  # a traceback: the finding
                code = -1
                err.write(f"{type(error).__name__}: {error}")
        message = err.getvalue()
        got = "succeeds" if code == 0 else "refused" if code in (1, 2) else "crashed"
        written = sorted(p.name for p in (folder / "out").glob("*.png")) if (folder / "out").is_dir() else []
        problems = self.judge(case, got, message, Result(written, folder / "out"))
        problems += [f"partial file {path}" for path in sorted(folder.rglob("*.tmp"))]
        return outcome(case, got, message, problems)

    def judge(self, case: Case, got: str, message: str, result: Result) -> list[str]:
        """Why `got` / `message` / `result` is not what `case` expects (empty: it is)."""
        if case.refused:
            if got != "refused":
                return [f"expected a refusal, got {got}: {message[:300]}"]
            missing = [word for word in case.words if word.lower() not in message.lower()]
            return [f"the error does not say {missing}: {message[:400]}"] if missing else []
        if got != "succeeds":
            return [f"expected success ({case.sane}), got {got}: {message[:400]}"]
        try:
            if case.check is not None:
                case.check(self, result)
        except AssertionError as error:
            return [f"not sane ({case.sane}): {error}"]
        return []

    def run(self, case: Case) -> Outcome:
        return self.run_server(case) if case.surface == "server" else self.run_cli(case)


def outcome(case: Case, got: str, message: str, problems: list[str]) -> Outcome:
    return Outcome(case.name, case.surface, "refused" if case.refused else "succeeds", got,
                   " ".join(message.split())[:500], not problems, "; ".join(problems))


def all_cases(heavy: bool = False) -> list[Case]:
    cases = [case for case in server_cases() + cli_cases() if heavy or not case.heavy]
    names = [case.name for case in cases]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        raise ValueError(f"matrix case names must be distinct: {sorted(duplicates)}")
    return cases
