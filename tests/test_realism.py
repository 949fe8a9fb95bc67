"""The realism control: the one-click node's `realism` input and the CLI's `--realism` apply the shipped
realism adapter (weights/loras/onestep_sr_realism.safetensors) to the shipped default model at that
strength; 0 is the faithful output, untouched; any strength equals the stock LoraLoaderModelOnly at it."""

import subprocess
import sys

import pytest
import torch
from PIL import Image

from onestep_sr.adapters.lora import METADATA_KEY, merged_lora
from onestep_sr.cli import DEFAULT_MODEL, main, REALISM_ADAPTER
from onestep_sr.files.images import read_image
from onestep_sr.files.tensors import read_metadata
from onestep_sr.models.flow_map_sr import load_model
from onestep_sr.models.pipeline import upscale
from onestep_sr.testing import comfy_host as host_lib

EXAMPLE = host_lib.REPO / "assets" / "example.png"


def test_the_shipped_adapter_is_a_small_lora_for_the_shipped_model_with_its_recipe():
    from onestep_sr.files.digest import file_sha256

    info = read_metadata(REALISM_ADAPTER)[METADATA_KEY]
    assert REALISM_ADAPTER.stat().st_size < 8 * 2 ** 20
    assert info["recipe"]["base_model_sha256"] == file_sha256(DEFAULT_MODEL)
    assert info["recipe"]["objective"] and info["recipe"]["training_command"].startswith("python scripts/")


def test_realism_changes_the_output_by_its_strength():
    net, image = load_model(str(DEFAULT_MODEL)), read_image(EXAMPLE)[..., :40, :48]
    with torch.no_grad():
        outputs = [upscale(merged_lora(net, REALISM_ADAPTER, r) if r else net, image, 4) for r in (0.0, 0.5, 1.0)]
    half, full = (outputs[1] - outputs[0]).abs().mean(), (outputs[2] - outputs[0]).abs().mean()
    assert full > 1e-3 and 0.3 * full < half < 0.7 * full  # a LoRA is linear in strength, the output nearly so


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_the_node_equals_the_stock_lora_loader_at_the_same_strength(comfy_host, strength):
    Image.open(EXAMPLE).crop((0, 0, 48, 40)).save(comfy_host.folder_paths.get_input_directory() + "/realism.png")
    graph = comfy_host.graph()
    loader = graph.node("OneStepSR_LoadModel", model_name=DEFAULT_MODEL.name)
    image = graph.node("LoadImage", image="realism.png")
    stock = graph.node("LoraLoaderModelOnly", model=loader.out(0), lora_name=REALISM_ADAPTER.name,
                       strength_model=strength)
    defaults = host_lib.widget_defaults(comfy_host.input_types("OneStepSR_Upscale"))
    ours = graph.node("OneStepSR_Upscale", **{**defaults, "model": loader.out(0), "vae": loader.out(1),
                                               "image": image.out(0), "scale_by": 4.0, "realism": strength})
    theirs = graph.node("OneStepSR_Upscale", **{**defaults, "model": stock.out(0), "vae": loader.out(1),
                                                 "image": image.out(0), "scale_by": 4.0, "realism": 0.0})
    plain = graph.node("OneStepSR_Upscale", **{**defaults, "model": loader.out(0), "vae": loader.out(1),
                                                "image": image.out(0), "scale_by": 4.0, "realism": 0.0})
    for node in (ours, theirs, plain):
        graph.node("PreviewImage", images=node.out(0))
    run = comfy_host.run_prompt(graph.finalize()).check()
    ours, theirs, plain = (run.output(node.id) for node in (ours, theirs, plain))
    assert (ours - theirs).abs().max() <= 1e-5
    assert (ours - plain).abs().mean() > 1e-3
    # realism 0 is the untouched default model: the pure pipeline's float32 output
    with torch.no_grad():
        expected = upscale(load_model(str(DEFAULT_MODEL)), read_image(EXAMPLE)[..., :40, :48], 4)
    assert (plain.permute(0, 3, 1, 2) - expected).abs().max() <= 1e-5


def test_realism_on_a_model_without_the_adapter_is_refused_by_name(comfy_host):
    from onestep_sr.testing import tiny_models

    upscale_fn = comfy_host.module("bridge.upscale").upscale
    defaults = host_lib.widget_defaults(comfy_host.input_types("OneStepSR_Upscale"))
    with pytest.raises(ValueError, match="realism applies the realism adapter shipped for the OneStep SR default"):
        upscale_fn(**{**defaults, "model": tiny_models.build_model("sd3"), "vae": tiny_models.build_vae(16),
                      "image": torch.rand(1, 32, 32, 3), "positive": tiny_models.conditioning("sd3"), "realism": 0.5})
    with pytest.raises(ValueError, match="realism must lie in"):
        upscale_fn(**{**defaults, "model": tiny_models.build_model("sd3"), "vae": tiny_models.build_vae(16),
                      "image": torch.rand(1, 32, 32, 3), "positive": tiny_models.conditioning("sd3"), "realism": 1.5})


def test_the_cli_realism_flag_merges_the_adapter_at_its_strength(tmp_path):
    out = tmp_path / "half.png"
    assert main(["upscale", str(EXAMPLE), "-o", str(out), "--realism", "0.5", "--precision", "fp32"]) == 0
    net = merged_lora(load_model(str(DEFAULT_MODEL)), REALISM_ADAPTER, 0.5)
    with torch.no_grad():
        expected = upscale(net, read_image(EXAMPLE), 4)
    got = read_image(out)
    assert (got - expected).abs().max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan"])
def test_the_cli_refuses_realism_outside_zero_to_one(value, tmp_path):
    run = subprocess.run([sys.executable, "-m", "onestep_sr.cli", "upscale", str(EXAMPLE), "-o", str(tmp_path / "x.png"),
                          "--realism", value], capture_output=True, text=True)
    assert run.returncode == 2 and "--realism must lie in [0, 1]" in run.stderr
