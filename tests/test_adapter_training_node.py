"""'Train SR LoRA' (bridge/training_runs.py) in a real ComfyUI in-process: it trains on an IMAGE batch or a
folder, saves the LoRA into models/loras/ (never over an existing file unless asked), returns the MODEL
with the LoRA and a loss plot, and an interrupted run keeps its checkpoint and resumes from it."""

import importlib

import numpy as np
import pytest
import torch
from PIL import Image

from onestep_sr.files.tensors import read_metadata
from onestep_sr.models.flow_map_sr import FlowMapSRNet, save_model

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def nodes(comfy_host):
    package = comfy_host.extension_module.__name__
    return {name: importlib.import_module(f"{package}.bridge.{name}") for name in ("training_runs", "default_model")}


@pytest.fixture(scope="module")
def default_model(nodes, tmp_path_factory):
    torch.manual_seed(0)
    net = FlowMapSRNet(width=16, blocks=2)
    torch.nn.init.normal_(net.conv_out.weight, std=0.05)
    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    save_model(net, str(path))
    return nodes["default_model"].load_default_model(str(path))


def settings(**overrides):
    args = dict(lora_name="trained_sr", steps=2, batch_size=2, crop_size=32, scale=4, rank=2, learning_rate=1e-2,
                adversarial_weight=0.05, discriminator="patch", seed=0)
    args.update(overrides)
    return args


def test_trains_saves_and_returns_the_tuned_model(nodes, default_model, comfy_host):
    model, vae = default_model
    images = torch.rand(2, 40, 48, 3, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():  # as ComfyUI runs nodes
        tuned, plot, report = nodes["training_runs"].train_sr_lora(model, vae, images=images, **settings())
    path = comfy_host.base / "models" / "loras" / "trained_sr.safetensors"
    info = read_metadata(path)["onestep_sr_lora"]
    assert path.name in report and info["rank"] == 2 and info["recipe"]["step"] == 2
    assert info["recipe"]["hr_images"] == 2 and info["key_prefix"] == "diffusion_model.net."
    assert len(tuned.patches) > 0 and set(tuned.patches) <= set(model.model.state_dict())
    assert plot.shape[0] == 1 and plot.shape[-1] == 3 and 0 <= plot.min() and plot.max() <= 1
    with pytest.raises(FileExistsError, match="overwrite"):  # checked before any training
        nodes["training_runs"].train_sr_lora(model, vae, images=images, **settings())


def test_a_model_trained_with_a_perceptual_term_trains_its_lora_without_the_perceptual_network(
        nodes, comfy_host, tmp_path, monkeypatch):
    """The shipped default model records objective "perceptual"; ST-LPIPS is a training extra that the users'
    requirements.txt does not install, so the node's LoRA keeps that objective's fidelity part."""
    net = FlowMapSRNet(width=16, blocks=2)
    path = tmp_path / "perceptual_base.safetensors"
    save_model(net, str(path), {"objective": "perceptual"})
    model, vae = nodes["default_model"].load_default_model(str(path))
    perceptual = importlib.import_module(f"{comfy_host.extension_module.__name__}.training.perceptual")

    def unavailable(*args, **kwargs):
        raise ImportError("stlpips-pytorch is not installed")
    monkeypatch.setattr(perceptual, "perceptual_distance", unavailable)
    images = torch.rand(2, 40, 48, 3, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        nodes["training_runs"].train_sr_lora(model, vae, images=images, **settings(lora_name="from_perceptual"))
    recipe = read_metadata(comfy_host.base / "models" / "loras" / "from_perceptual.safetensors")["onestep_sr_lora"]
    assert recipe["recipe"]["objective_options"]["consistency"] == "trajectory_endpoint"


def test_interrupted_run_keeps_its_checkpoint_and_resumes(nodes, default_model, comfy_host):
    import comfy.model_management
    import comfy.utils

    model, vae = default_model
    folder = comfy_host.base / "input" / "resumed_hr"
    folder.mkdir()
    for i in range(2):  # the folder input: two HR photos under ComfyUI's input folder
        array = (np.random.default_rng(i).random((40, 40, 3)) * 255).astype(np.uint8)
        Image.fromarray(array).save(folder / f"hr{i}.png")

    def interrupt_at_step_2(value, total, *args, **kwargs):
        if value == 2:
            comfy.model_management.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(interrupt_at_step_2)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            nodes["training_runs"].train_sr_lora(model, vae, folder="resumed_hr", **settings(lora_name="resumed", steps=4))
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        comfy.model_management.interrupt_current_processing(False)
    run = comfy_host.base / "output" / "onestep_sr_training" / "resumed"
    assert read_metadata(run / "checkpoint.safetensors")["step"] == 2
    assert not (comfy_host.base / "models" / "loras" / "resumed.safetensors").exists()
    _, _, report = nodes["training_runs"].train_sr_lora(model, vae, folder="resumed_hr", **settings(lora_name="resumed", steps=4))
    assert "(4 steps" in report and (comfy_host.base / "models" / "loras" / "resumed.safetensors").exists()


def test_refuses_eps_models_and_missing_images(nodes, default_model):
    from onestep_sr.testing import tiny_models

    model, vae = default_model
    with pytest.raises(ValueError, match="IMAGE batch"):
        nodes["training_runs"].train_sr_lora(model, vae, **settings(lora_name="none"))
    with pytest.raises(ValueError, match="ModelSamplingSD3"):  # eps models; flow models: test_native_lora_training
        nodes["training_runs"].train_sr_lora(tiny_models.build_model("sd2"), tiny_models.build_vae(4),
                                             images=torch.rand(1, 40, 40, 3), **settings(lora_name="native"))


def test_a_run_folder_of_other_settings_is_refused_naming_lora_name(nodes, default_model, comfy_host):
    """The same lora_name with another rank finds the first run's checkpoint: refused with the fix (another
    lora_name, or delete the folder), not torch's bare size-mismatch RuntimeError; the first LoRA file stays."""
    model, vae = default_model
    images = torch.rand(2, 40, 48, 3, generator=torch.Generator().manual_seed(1))
    args = settings(lora_name="rank_change", overwrite=True)
    with torch.inference_mode():
        nodes["training_runs"].train_sr_lora(model, vae, images=images, **args)
        path = comfy_host.base / "models" / "loras" / "rank_change.safetensors"
        written = path.read_bytes()
        with pytest.raises(ValueError, match=r"Train SR LoRA: .*rank_change holds the checkpoint of an earlier run.*"
                                             r"choose another lora_name.*other shapes \[.*lora_A"):
            nodes["training_runs"].train_sr_lora(model, vae, images=images, **dict(args, rank=4, steps=4))
    assert path.read_bytes() == written
    assert not any("lora" in name for name, _ in model.model.named_modules()), "the MODEL kept a LoRA layer"
