"""'Train SR LoRA' on native ComfyUI flow models (bridge/native_training.py) in a real ComfyUI in-process: tiny
FLUX, SD3 and SD2 patched to flow sampling train a LoRA in their own diffusion model, which is unchanged
afterwards; the file holds only keys ComfyUI's stock loader maps, and the MODEL returned (stock loader)
gives the trained generator's outputs. eps models and text models without a prompt are refused clearly."""

import importlib

import pytest
import torch

from onestep_sr.testing import tiny_models

pytestmark = pytest.mark.host

LORA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")


@pytest.fixture(scope="module")
def nodes(comfy_host):
    package = comfy_host.extension_module.__name__
    return {name: importlib.import_module(f"{package}.bridge.{name}") for name in ("training_runs", "native_training")}


def flow_model(family):
    """A tiny `family` MODEL that samples as a rectified flow (SD2 through ComfyUI's ModelSamplingSD3 node)."""
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    model = tiny_models.build_model(family)
    return ModelSamplingSD3().patch(model, shift=3.0)[0] if family == "sd2" else model


def settings(**overrides):
    args = dict(lora_name="native_sr", steps=6, batch_size=2, crop_size=64, scale=4, rank=4, learning_rate=2e-2,
                adversarial_weight=0.05, discriminator="patch", seed=0)
    args.update(overrides)
    return args


def denoised(model, x, positive, native_training):
    """apply_model's x0 at sigma 1 for the MODEL as loaded now, conditioned like the trainer's generator."""
    conds = native_training.model_conditioning(model, positive, x)
    kwargs = {name: c.process_cond(batch_size=x.shape[0], device=x.device, area=None).cond for name, c in conds.items()}
    with torch.no_grad():
        return model.model.apply_model(x, torch.ones(x.shape[0]), **kwargs)


def module_tree(module):
    return ([(name, type(m)) for name, m in module.named_modules()],
            [(name, p.requires_grad) for name, p in module.named_parameters()])


@pytest.mark.parametrize("family", ["flux", "sd3", "sd2"])
def test_trains_a_lora_the_stock_loader_applies_and_leaves_the_model_unchanged(family, nodes, comfy_host, monkeypatch):
    import comfy.lora
    import comfy.model_management
    import comfy.utils

    native_training = nodes["native_training"]
    # ComfyUI loads models and runs nodes in inference mode: the node must train all the same.
    with torch.inference_mode():
        model = flow_model(family)
    vae = tiny_models.build_vae(tiny_models.FAMILIES[family]["latent_channels"])
    positive = tiny_models.conditioning(family)
    lr_latent = torch.randn(1, tiny_models.FAMILIES[family]["latent_channels"], 8, 8,
                            generator=torch.Generator().manual_seed(7))
    comfy.model_management.load_models_gpu([model])
    base_output = denoised(model, lr_latent, positive, native_training)
    diffusion_model = model.model.diffusion_model
    base_state = {k: v.clone() for k, v in diffusion_model.state_dict().items()}
    base_tree = module_tree(diffusion_model)

    trained_outputs = []
    real_remove_lora = native_training.remove_lora

    def remove_after_recording(net):  # the trained generator's output, just before the LoRA leaves the model
        trained_outputs.append(denoised(model, lr_latent, positive, native_training))
        return real_remove_lora(net)

    monkeypatch.setattr(native_training, "remove_lora", remove_after_recording)
    name = f"native_{family}"
    images = torch.rand(2, 72, 80, 3, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        tuned, plot, report = nodes["training_runs"].train_sr_lora(model, vae, images=images, positive=positive,
                                                                    **settings(lora_name=name))

    # the MODEL is unchanged: LoRA removed, base weights frozen, module tree and flags restored
    assert module_tree(diffusion_model) == base_tree
    state = diffusion_model.state_dict()
    assert state.keys() == base_state.keys() and all(torch.equal(state[k], v) for k, v in base_state.items())

    path = comfy_host.base / "models" / "loras" / f"{name}.safetensors"
    assert path.name in report and "(6 steps" in report and plot.shape[-1] == 3
    lora = comfy.utils.load_torch_file(str(path), safe_load=True)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    modules = {key[:-len(suffix)] for key in lora for suffix in LORA_SUFFIXES if key.endswith(suffix)}
    assert len(modules) * 3 == len(lora) and modules <= set(key_map), sorted(modules - set(key_map))
    assert len(tuned.patches) == len(modules)

    comfy.model_management.load_models_gpu([tuned])
    stock_output = denoised(tuned, lr_latent, positive, native_training)
    assert len(trained_outputs) == 1
    assert (stock_output - trained_outputs[0]).abs().max() <= 1e-5
    assert (stock_output - base_output).abs().max() > 1e-3  # the LoRA learnt something


def test_eps_model_without_flow_patch_is_refused(nodes):
    with pytest.raises(ValueError, match="ModelSamplingSD3"):
        nodes["training_runs"].train_sr_lora(tiny_models.build_model("sd2"), tiny_models.build_vae(4),
                                             images=torch.rand(1, 72, 72, 3), positive=tiny_models.conditioning("sd2"),
                                             **settings(lora_name="eps"))


def test_text_model_without_positive_is_refused(nodes, comfy_host):
    with pytest.raises(ValueError, match="'positive'"):
        nodes["training_runs"].train_sr_lora(flow_model("flux"), tiny_models.build_vae(16),
                                             images=torch.rand(1, 72, 72, 3), **settings(lora_name="no_prompt"))
    assert not (comfy_host.base / "models" / "loras" / "no_prompt.safetensors").exists()


def test_remove_lora_restores_the_module_tree_and_flags(nodes):
    from onestep_sr.adapters.lora import add_lora, lora_layers, LoraSpec, NATIVE_TARGETS, remove_lora

    diffusion_model = tiny_models.build_model("sd2").model.diffusion_model
    diffusion_model.time_embed.requires_grad_(False)  # mixed flags, as a partly frozen model has
    tree, params = module_tree(diffusion_model), dict(diffusion_model.named_parameters())
    add_lora(diffusion_model, LoraSpec(rank=2, target_modules=NATIVE_TARGETS))
    assert lora_layers(diffusion_model) and not any(p.requires_grad for p in params.values())
    remove_lora(diffusion_model)
    assert module_tree(diffusion_model) == tree and not hasattr(diffusion_model, "peft_config")
    assert all(p is params[name] for name, p in diffusion_model.named_parameters())
    with pytest.raises(ValueError, match="no LoRA layers"):
        remove_lora(diffusion_model)
