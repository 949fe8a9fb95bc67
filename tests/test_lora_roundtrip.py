"""A LoRA trained and written by the project (training/adversarial.py + adapters/lora.py) gives, through
ComfyUI's stock 'LoraLoaderModelOnly' on the MODEL of 'Load OneStep SR Model', the outputs the
network had in training; its PEFT folder loads with peft's own PeftModel; files never overwrite."""

import copy
import dataclasses

import pytest
import torch

from onestep_sr.adapters.lora import add_lora, load_lora, lora_layers, LoraSpec, read_lora, save_lora, set_strength
from onestep_sr.files.tensors import load_tensors
from onestep_sr.models.flow_map_sr import FlowMapSRNet, save_model
from onestep_sr.samplers.sampling import TARGET_KEY
from onestep_sr.training.adversarial import AdversarialLoRA, AdversarialLoRATrainer
from onestep_sr.training.trainer import TrainConfig

SIZE = 32


def tiny_base():
    torch.manual_seed(0)
    net = FlowMapSRNet(width=16, blocks=2).eval()
    torch.nn.init.normal_(net.conv_out.weight, std=0.05)  # undo the zero init so u depends on the LoRA
    return net


def sr_batches(generator):
    hr = torch.rand(4, 3, SIZE, SIZE, generator=generator) * 2 - 1
    lr = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(hr, 4), scale_factor=4, mode="nearest")
    return {"x0": hr, "x1": lr, "cond": lr}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(base weights, tuned generator): a few adversarial steps at a large learning rate."""
    base = tiny_base()
    net = copy.deepcopy(base)
    probe = (torch.zeros(1, 3, SIZE, SIZE), torch.zeros(1, 3, SIZE, SIZE))
    trainer = AdversarialLoRATrainer(
        net, LoraSpec(rank=4, alpha=2.0), AdversarialLoRA(), sr_batches,
        TrainConfig(output_dir=str(tmp_path_factory.mktemp("adv")), steps=3, lr=2e-2, ema_decay=0.0, progress=False),
        probe=probe, discriminator="patch")
    trainer.train()
    return base, trainer


def widget_defaults(comfy_host, class_type):
    required = comfy_host.input_types(class_type)["required"]
    return {name: spec[1]["default"] for name, spec in required.items() if len(spec) > 1 and "default" in spec[1]}


def call(net, x, t, s, cond):
    with torch.no_grad():
        return net(x, torch.full((x.shape[0],), t), torch.full((x.shape[0],), s), cond)


def test_training_changes_only_the_adapter(trained):
    base, trainer = trained
    generator = trainer.generator
    ups = [layer.lora_B["default"].weight for layer in lora_layers(generator).values()]
    assert all(up.abs().max() > 1e-3 for up in ups)  # the adapter was trained (B starts at zero)
    tuned = {k: v for k, v in generator.state_dict().items() if "lora_" not in k}
    for key, value in base.state_dict().items():
        stored = tuned.get(key, tuned.get(key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")))
        assert torch.equal(stored, value), key


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_comfy_stock_lora_loader_reproduces_training_outputs(comfy_host, trained, strength):
    import comfy.model_management

    base, trainer = trained
    models = comfy_host.base / "models"
    base_name, lora_name = "lora_test_base.safetensors", f"lora_test_adapter_{strength}.safetensors"
    save_model(base, str(models / "onestep_sr" / base_name))
    trainer.export(models / "loras" / lora_name, overwrite=True)
    comfy_host.folder_paths.filename_list_cache.clear()

    graph = comfy_host.graph()
    load = graph.node("OneStepSR_LoadModel", model_name=base_name)
    lora = graph.node("LoraLoaderModelOnly", model=load.out(0), lora_name=lora_name, strength_model=strength)
    image = graph.node("EmptyImage", width=8, height=8, batch_size=1, color=0x808080)
    upscale = graph.node("OneStepSR_Upscale", model=lora.out(0), vae=load.out(1), image=image.out(0),
                         **widget_defaults(comfy_host, "OneStepSR_Upscale"))
    graph.node("PreviewImage", images=upscale.out(0))
    run = comfy_host.run_prompt(graph.finalize()).check()
    patched = run.output(lora.id)
    assert len(patched.patches) == len(lora_layers(trainer.generator))  # every layer, no key left behind

    comfy.model_management.load_models_gpu([patched])
    diffusion_model = patched.model.diffusion_model
    reference = trainer.ema_net.generator
    set_strength(reference, strength)
    torch.manual_seed(1)
    x, cond = torch.randn(2, 3, SIZE, SIZE), torch.randn(2, 3, SIZE, SIZE)
    try:
        for t, s in ((1.0, 0.0), (0.75, 0.75), (0.5, 0.25)):
            options = {TARGET_KEY: {"sigma_to": s, "family": "shortcut"}}
            with torch.no_grad():
                comfy_u = diffusion_model(x, torch.full((2,), t), transformer_options=options)
            expected = call(reference, x, t, s, cond)
            assert (comfy_u - expected).abs().max() <= 1e-5
            assert (expected - call(base, x, t, s, cond)).abs().max() > 1e-3  # the LoRA matters
    finally:
        set_strength(reference, 1.0)
        patched.unpatch_model()


def test_peft_folder_and_comfy_file_reload_the_same_network(trained, tmp_path):
    from peft import PeftModel

    base, trainer = trained
    reference = trainer.ema_net.generator
    comfy_file = trainer.export(tmp_path / "a.safetensors")
    peft_dir = trainer.export(tmp_path / "a_peft", file_format="peft")
    torch.manual_seed(2)
    x = torch.randn(1, 3, SIZE, SIZE)
    expected = call(reference, x, 1.0, 0.0, x)
    via_peft = PeftModel.from_pretrained(copy.deepcopy(base), str(peft_dir))
    via_file = load_lora(copy.deepcopy(base), comfy_file)
    assert (call(via_peft, x, 1.0, 0.0, x) - expected).abs().max() <= 1e-6
    assert (call(via_file, x, 1.0, 0.0, x) - expected).abs().max() <= 1e-6

    spec, weights, metadata = read_lora(comfy_file)
    assert spec == LoraSpec(rank=4, alpha=2.0) and len(weights) == len(lora_layers(reference))
    info = metadata["onestep_sr_lora"]
    assert info["key_prefix"] == "diffusion_model.net." and info["recipe"]["objective"] == "adversarial_lora"
    assert info["recipe"]["objective_options"]["gan_loss"] == "hinge" and metadata["ss_network_dim"] == 4


def test_files_are_never_overwritten_and_bad_specs_are_named(trained, tmp_path):
    _, trainer = trained
    path = trainer.export(tmp_path / "b.safetensors")
    with pytest.raises(FileExistsError, match="overwrite"):
        trainer.export(path)
    with pytest.raises(ValueError, match="match no layer"):
        add_lora(tiny_base(), LoraSpec(target_modules=("no_such_layer",)))
    with pytest.raises(ValueError, match="rank"):
        LoraSpec(rank=0)
    with pytest.raises(ValueError, match="does not fit"):
        load_lora(FlowMapSRNet(width=16, blocks=3), path)
    with pytest.raises(ValueError, match=".safetensors"):
        save_lora(tmp_path / "c.pt", trainer.generator, trainer.spec)


def test_checkpoints_hold_the_run_not_the_frozen_base(trained):
    base, trainer = trained
    tensors, meta = load_tensors(trainer.checkpoint_path)
    frozen = {name for name, p in trainer.net.named_parameters() if not p.requires_grad}
    assert frozen and not any(key.split(".", 1)[1] in frozen for key in tensors if key.startswith(("net.", "ema.")))
    assert any("lora_A" in key for key in tensors) and any(key.startswith("net.discriminator.") for key in tensors)

    resumed = AdversarialLoRATrainer(  # resumes on a fresh copy of the base: the adapter comes back, the base stays
        copy.deepcopy(base), trainer.spec, AdversarialLoRA(), sr_batches,
        dataclasses.replace(trainer.config, progress=False), probe=(torch.zeros(1, 3, SIZE, SIZE),) * 2,
        discriminator="patch")
    assert resumed.step == meta["step"] == 3
    state = resumed.net.state_dict()
    assert all(torch.equal(state[key], value) for key, value in trainer.net.state_dict().items())
    with pytest.raises(ValueError, match="does not fit"):
        AdversarialLoRATrainer(copy.deepcopy(base), LoraSpec(rank=4, alpha=2.0, target_modules=("conv1",)),
                               AdversarialLoRA(), sr_batches, trainer.config,
                               probe=(torch.zeros(1, 3, SIZE, SIZE),) * 2, discriminator="patch")


def test_training_further_starts_from_the_given_adapter(trained, tmp_path):
    """`initial`: step 0 of the new run is the saved adapter (its generator equals the file loaded on a
    fresh base, and its EMA starts there too); a file of another rank is refused by name."""
    base, trainer = trained
    path = save_lora(tmp_path / "first.safetensors", trainer.generator, trainer.spec)
    further = AdversarialLoRATrainer(
        copy.deepcopy(base), trainer.spec, AdversarialLoRA(), sr_batches,
        TrainConfig(output_dir=str(tmp_path / "further"), steps=1, lr=2e-2, ema_decay=0.5, progress=False),
        probe=(torch.zeros(1, 3, SIZE, SIZE),) * 2, discriminator="patch", initial=path)
    expected = load_lora(copy.deepcopy(base), path)
    x = torch.randn(2, 3, SIZE, SIZE)
    for net in (further.generator, further.lora_network(further.ema_net)):
        assert torch.equal(call(net, x, 0.8, 0.0, x), call(expected, x, 0.8, 0.0, x))
    assert not torch.equal(call(expected, x, 0.8, 0.0, x), call(base, x, 0.8, 0.0, x))  # the file holds an update
    assert further.metadata["initial_lora"] == "first.safetensors"
    with pytest.raises(ValueError, match="rank 4 .*--rank"):
        AdversarialLoRATrainer(copy.deepcopy(base), LoraSpec(rank=8, alpha=4.0), AdversarialLoRA(), sr_batches,
                               TrainConfig(output_dir=str(tmp_path / "other"), steps=1, progress=False),
                               probe=(torch.zeros(1, 3, SIZE, SIZE),) * 2, discriminator="patch", initial=path)
