"""'OneStep SR Teacher Pairs' and 'OneStep SR Train FTD LoRA' (bridge/teacher_pairs.py, bridge/ftd_training.py)
in a real ComfyUI in-process, on a tiny FLUX: the pairs are what stock KSampler makes of the same seed and
steps, a rerun resumes (skips what is written), other settings are refused by name, names cannot leave the
output folder, and an FTD LoRA trains on the pairs and loads with ComfyUI's stock loader."""

import importlib
import os
import shutil

import pytest
import torch

from onestep_sr.testing import tiny_models

pytestmark = pytest.mark.host

STEPS = 20
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def bridge(comfy_host):
    package = comfy_host.extension_module.__name__
    return {name: importlib.import_module(f"{package}.bridge.{name}") for name in ("teacher_pairs", "ftd_training")}


@pytest.fixture(scope="module")
def teacher():
    with torch.inference_mode():  # as ComfyUI's loaders make models
        model = tiny_models.build_model("flux")
    return {"model": model, "vae": tiny_models.build_vae(16), "positive": tiny_models.conditioning("flux"),
            "negative": tiny_models.conditioning("flux", seed=1),
            "latent": {"samples": torch.zeros(1, 16, 8, 8)}}


def settings(teacher, name, **overrides):
    args = dict(teacher, name=name, count=3, seed=5, steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="simple",
                scale=4)
    args.update(overrides)
    return args


def fresh(bridge, name):
    folder = bridge["teacher_pairs"].pairs_folder(name)
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def test_pairs_equal_stock_ksampler_for_the_same_seed_and_steps(bridge, teacher, comfy_host):
    from onestep_sr.files.tensors import load_tensors
    import comfy.sample

    folder = fresh(bridge, "ksampler_check")
    with torch.inference_mode():  # ComfyUI runs nodes so
        name, report = bridge["teacher_pairs"].teacher_pairs(**settings(teacher, "ksampler_check"))
    assert name == "ksampler_check" and "3 written" in report
    ksampler = comfy_host.nodes.KSampler()
    worst = 0.0
    for index in range(3):
        tensors, meta = load_tensors(folder / f"pair_{index:06d}.safetensors")
        with torch.inference_mode():
            (stock,) = ksampler.sample(teacher["model"], 5 + index, STEPS, 1.0, "euler", "simple", teacher["positive"],
                                       teacher["negative"], teacher["latent"])
        expected_noise = comfy.sample.prepare_noise(teacher["latent"]["samples"], 5 + index)
        assert torch.equal(tensors["noise"], expected_noise)
        worst = max(worst, float((tensors["latent"] - stock["samples"]).abs().max()))
        assert tensors["lr_latent"].shape == stock["samples"].shape and meta["seed"] == 5 + index
    print(f"\nteacher pairs vs stock KSampler ({STEPS} steps, 3 seeds): max |difference| {worst:.3g}")
    assert worst <= TOLERANCE
    # distinct seeds give distinct images, and the teacher really moved the noise
    first, second = (load_tensors(folder / f"pair_00000{i}.safetensors")[0] for i in (0, 1))
    assert not torch.allclose(first["latent"], second["latent"])


def test_a_rerun_resumes_and_other_settings_are_refused_by_name(bridge, teacher):
    folder = fresh(bridge, "resume_check")
    with torch.inference_mode():
        bridge["teacher_pairs"].teacher_pairs(**settings(teacher, "resume_check", count=2))
        stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("pair_*")}
        os.remove(folder / "pair_000001.safetensors")
        _, report = bridge["teacher_pairs"].teacher_pairs(**settings(teacher, "resume_check", count=3))
    assert "2 written, 1 already there" in report
    assert (folder / "pair_000000.safetensors").stat().st_mtime_ns == stamps["pair_000000.safetensors"]
    assert not list(folder.glob(".*.tmp")), "a temporary file was left behind"
    with pytest.raises(ValueError, match=r"steps: 20 there, 4 now.*another 'name'"):
        bridge["teacher_pairs"].teacher_pairs(**settings(teacher, "resume_check", steps=4))
    with torch.inference_mode():
        other = tiny_models.build_model("flux")
        next(iter(other.model.diffusion_model.parameters())).add_(1.0)  # another checkpoint of the same family
    with pytest.raises(ValueError, match="model: "):
        bridge["teacher_pairs"].teacher_pairs(**settings(teacher, "resume_check", model=other))
    with pytest.raises(ValueError, match="positive"):
        bridge["teacher_pairs"].teacher_pairs(**settings(teacher, "resume_check",
                                                         positive=tiny_models.conditioning("flux", seed=9)))


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", ".hidden", "a/b", ""])
def test_names_stay_inside_the_output_folder(bridge, teacher, name):
    with pytest.raises(ValueError, match="plain folder name"):
        bridge["teacher_pairs"].teacher_pairs(**settings(teacher, name))


def test_training_reads_the_drawn_pairs_from_disk_a_batch_at_a_time(bridge, teacher):
    """ftd_batches: the pairs the generator draws, read from their files at each draw (nothing is held),
    in the model's latent space; a pair of another latent size is refused by name."""
    from safetensors.torch import load_file

    from onestep_sr.files.tensors import save_tensors

    folder = fresh(bridge, "stream_check")
    with torch.inference_mode():
        bridge["teacher_pairs"].teacher_pairs(**settings(teacher, "stream_check", count=3, steps=2))
    files = bridge["teacher_pairs"].pair_files(folder)
    base_model = teacher["model"].model
    batch = bridge["ftd_training"].ftd_batches(base_model, files, 5)(torch.Generator().manual_seed(7))
    drawn = torch.randint(0, 3, (5,), generator=torch.Generator().manual_seed(7)).tolist()
    assert len(set(drawn)) > 1
    for row, index in enumerate(drawn):
        stored = load_file(folder / f"pair_{index:06d}.safetensors")
        assert torch.equal(batch["x0"][row], base_model.process_latent_in(stored["latent"])[0])
        assert torch.equal(batch["x1"][row], stored["noise"][0])
        assert torch.equal(batch["lr"][row], base_model.process_latent_in(stored["lr_latent"])[0])
        assert torch.equal(batch["cond"][row], batch["lr"][row])
    save_tensors(folder / "pair_000009.safetensors", {key: torch.zeros(1, 16, 4, 4) for key in ("noise", "latent", "lr_latent")},
                 {"format": bridge["teacher_pairs"].PAIR_FORMAT})
    with pytest.raises(ValueError, match=r"pair_000009.safetensors holds a latent of shape \[1, 16, 4, 4\].*one size"):
        bridge["teacher_pairs"].pair_files(folder)


def test_ftd_lora_trains_on_the_pairs_and_loads_with_the_stock_loader(bridge, teacher, comfy_host):
    import comfy.model_management
    import folder_paths

    fresh(bridge, "ftd_train")
    with torch.inference_mode():
        bridge["teacher_pairs"].teacher_pairs(**settings(teacher, "ftd_train", count=4, steps=4))
    with pytest.raises(ValueError, match="no teacher pairs"):
        bridge["ftd_training"].train_ftd_lora(teacher["model"], "missing_pairs", "x", 2, 2, 4, 1e-3, 0.5, "+1", 0.0, 0)
    model = teacher["model"]
    comfy.model_management.load_models_gpu([model])
    before = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    with torch.inference_mode():
        tuned, plot, report = bridge["ftd_training"].train_ftd_lora(
            model, "ftd_train", "ftd_tiny", 6, 2, 4, 1e-3, 0.5, "+1", 0.1, 0, overwrite=True,
            positive=teacher["positive"], gradient_checkpointing=True)
    after = model.model.diffusion_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the MODEL's own weights changed"
    assert not any("forward" in m.__dict__ for m in model.model.diffusion_model.modules()), "a block kept its wrapper"
    lora = os.path.join(folder_paths.get_folder_paths("loras")[0], "ftd_tiny.safetensors")
    assert os.path.exists(lora) and "6 steps on 4 teacher pairs" in report
    assert plot.ndim == 4 and plot.shape[-1] == 3
    assert tuned is not model and len(tuned.patches) > 0


def test_the_ftd_workflows_training_nodes_validate_when_unmuted(comfy_host):
    """The shipped FLUX FTD workflow mutes its training nodes (run once by hand); unmuted, they validate too."""
    import json

    from onestep_sr.testing import comfy_host as host_lib

    workflow = json.loads((host_lib.WORKFLOWS / "onestep_sr_ftd_flux.json").read_text())
    muted = {node["type"] for node in workflow["nodes"] if node.get("mode") == 2}
    assert muted == {"OneStepSR_TeacherPairs", "OneStepSR_TrainFTDLoRA", "EmptySD3LatentImage"}
    for node in workflow["nodes"]:
        node["mode"] = 0
    prompt = host_lib.workflow_to_prompt(workflow, comfy_host.input_types)
    assert {"OneStepSR_TeacherPairs", "OneStepSR_TrainFTDLoRA"} <= {n["class_type"] for n in prompt.values()}
    with comfy_host.placeholder_files(host_lib.referenced_files(prompt)):
        valid, error, _, node_errors = comfy_host.validate(prompt)
    assert valid and not node_errors, f"{error}\n{json.dumps(node_errors, indent=1)}"
