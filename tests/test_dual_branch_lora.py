"""Train SR LoRA's dual-branch LoRA on tiny FLUX, SD3, Qwen-Image and Lumina 2 / Z-Image models through the
Dual-Branch Patch (bridge/dual_branch_lora.py, adapters/dual_lora.py), in a real ComfyUI in-process.

Known answers:
- at the start (B = 0) the trained network is the patched base model, exactly;
- the exported file, read back by Load SR Adapter, gives the trained network's output (1e-5);
- with every branch-1 update zeroed, the noise tokens' output of the first block's image-stream layer is
  the base model's (those tokens see only branch-1 updates up to there: the patch embedder is no target,
  the block's modulation of them is row 0), and with every branch-2 update zeroed the condition tokens' is
  (SD3 computes that layer once per token half: the two calls, joined, are [noise | condition]; Lumina 2's
  noise refiner sees [noise | padding | condition]);
- FLUX's single-block layer and Lumina 2's main-block layer see [text | noise | condition]: their output is
  W x + b plus scaling * B1 A1 x on the noise tokens (and Lumina 2's padding) and scaling * B2 A2 x on the
  others (written out by hand here);
- the MODEL is unchanged by training; ComfyUI's stock LoRA loader reads no key of the file.
"""

import json

import pytest
import torch

from onestep_sr.testing import tiny_models

pytestmark = pytest.mark.host
CROP, STEPS, RANK = 64, 12, 4
FAMILIES = ["flux", "sd3", "qwen_image", "lumina2"]
# the first block's image-stream layer (Qwen-Image: to_k; the one block's condition queries lead nowhere)
FIRST_LAYER = {"flux": "double_blocks.0.img_attn.qkv", "qwen_image": "transformer_blocks.0.attn.to_k",
               "sd3": "joint_blocks.0.x_block.attn.qkv", "lumina2": "noise_refiner.0.attention.qkv"}
# its output rows both branches train (SD3's one block: the condition queries lead nowhere, k and v do)
TRAINED_ROWS = {"sd3": slice(64, None)}
# its (noise, condition) tokens: 8x8 latent, patch 2; Lumina 2 pads the 16 noise tokens to 32
HALVES = {"lumina2": (slice(0, 16), slice(32, 48))}
TEXT_PARTS = ("txt_attn", "txt_mlp", "txt_mod", "add_k_proj", "add_v_proj", "add_q_proj", "to_add_out",
              "context_block", "context_refiner")
TIME_PARTS = ("time_in", "time_text_embed", "t_embedder", "y_embedder")


def randn(*shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def hr_images():
    y, x = torch.meshgrid(torch.linspace(0, 1, CROP), torch.linspace(0, 1, CROP), indexing="ij")
    return torch.stack([torch.stack([0.5 + 0.4 * torch.sin(2 * torch.pi * (x + c / 3) + y) for c in range(3)], -1)])


@pytest.fixture(scope="module")
def mods(comfy_host):
    return {name: comfy_host.module(f"bridge.{name}") for name in
            ("dual_branch", "native_training", "training_runs", "adapter_loading", "dual_branch_lora")} | {
        "dual_lora": comfy_host.module("adapters.dual_lora"), "adversarial": comfy_host.module("training.adversarial"),
        "trainer": comfy_host.module("training.trainer"), "sr_data": comfy_host.module("training.sr_data")}


def probe_inputs():
    """(x, t, s, cond): a latent, its current and target times, the LR latent (8x8 latents of 64 px crops)."""
    return randn(1, 16, 8, 8, seed=1), torch.tensor([0.8]), torch.tensor([0.3]), randn(1, 16, 8, 8, seed=2)


def flow_net(mods, model, positive):
    """NativeFlowNet over the loaded MODEL (its patches on), as Train SR LoRA builds it."""
    import comfy.model_management

    native = mods["native_training"]
    comfy.model_management.load_models_gpu([model])
    conds = native.model_conditioning(model, positive, probe_inputs()[0])
    return native.NativeFlowNet(model.model, conds, dict(model.model_options["transformer_options"]))


def capture(net, path, call):
    """(input, output) of the module at `path` of the net's diffusion model during call(), its calls joined
    along the tokens (SD3's x-block layers run once per token half)."""
    seen = []
    module = net.diffusion_model.get_submodule(path)
    handle = module.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    try:
        with torch.no_grad():
            call()
    finally:
        handle.remove()
    return tuple(torch.cat(parts, dim=1) for parts in zip(*seen))


def by_hand(layer, inp, branches):
    """The dual-branch layer's output on `inp` written out: [(branch, token count), ...] in sequence order."""
    with torch.no_grad():
        base = layer.base_layer(inp)
        deltas = {b: inp @ getattr(layer, f"lora_A{b}").T @ getattr(layer, f"lora_B{b}").T * layer.scaling
                  for b in (1, 2)}
    parts, start = [], 0
    for branch, count in branches:
        parts.append(base[:, start:start + count] + deltas[branch][:, start:start + count])
        start += count
    assert start == inp.shape[1]
    return torch.cat(parts, dim=1)


def state_of(model):
    return {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_trained_dual_branch_lora_exports_and_loads_back(mods, comfy_host, tmp_path, family):
    import comfy.model_management
    import comfy.sd
    from safetensors import safe_open
    from safetensors.torch import load_file

    dual_branch_layers = mods["dual_lora"].dual_branch_layers
    AdversarialLoRA, TrainConfig = mods["adversarial"].AdversarialLoRA, mods["trainer"].TrainConfig
    ImageCrops = mods["sr_data"].ImageCrops

    dual, native, runs = mods["dual_branch"], mods["native_training"], mods["training_runs"]
    vae = tiny_models.build_wan_vae() if family == "qwen_image" else tiny_models.build_vae(16)
    model = dual.dual_branch_patch(tiny_models.build_model(family))
    positive = tiny_models.conditioning(family, seed=1)
    x, t, s, cond = probe_inputs()
    before_state = state_of(model)
    with torch.no_grad():
        base_out = flow_net(mods, model, positive)(x, t, s, cond)
    base_first = capture(flow_net(mods, model, positive), FIRST_LAYER[family], lambda: flow_net(
        mods, model, positive)(x, t, s, cond))[1]
    model.unpatch_model()

    spec = runs.lora_spec(model, RANK, 0.0, "")
    objective = AdversarialLoRA(adversarial_weight=0.0, consistency_weight=1.0,
                                consistency=native.DUAL_CONSISTENCY)
    config = TrainConfig(output_dir=str(tmp_path / "run"), steps=STEPS, seed=0, lr=2e-3, ema_decay=None,
                         checkpoint_every=STEPS, progress=False)
    path = tmp_path / "dual.safetensors"
    with torch.inference_mode(False), native.native_lora_trainer(
            model, vae, positive, ImageCrops([hr_images()[0].permute(2, 0, 1)]), spec, objective, config,
            batch_size=1, crop_size=CROP, scale=4, real_degradation=0.0, discriminator="patch",
            metadata={"test": family}) as trainer:
        net = trainer.generator
        layers = dual_branch_layers(net)
        assert layers and not any(part in n for part in TIME_PARTS for n in layers)
        with torch.no_grad():
            assert float((net(x, t, s, cond) - base_out).abs().max()) == 0.0  # B = 0: the patched base exactly
        trainer.train()
        with torch.no_grad():
            trained = net(x, t, s, cond)
        assert float((trained - base_out).abs().max()) > 1e-4
        first = layers[f"diffusion_model.{FIRST_LAYER[family]}"]  # two different branches, both trained
        assert not torch.equal(first.lora_B1, first.lora_B2)
        rows = TRAINED_ROWS.get(family, slice(None))
        assert float(first.lora_B1.detach()[rows].abs().min(dim=0).values.max()) > 0
        assert float(first.lora_B2.detach()[rows].abs().min(dim=0).values.max()) > 0
        text_layers = [name for name in layers if any(f".{part}" in name for part in TEXT_PARTS)]
        assert text_layers and all(float(layers[n].lora_B2.detach().abs().max()) > 0 for n in text_layers[:1])
        assert all(not layers[n].lora_B1.any() for n in text_layers)  # the text sees branch 2 only

        noise, condition = HALVES.get(family, (slice(0, 16), slice(16, 32)))
        for zeroed, kept, other in ((1, noise, condition), (2, condition, noise)):
            saved = {name: getattr(layer, f"lora_B{zeroed}").detach().clone() for name, layer in layers.items()}
            with torch.no_grad():
                for layer in layers.values():
                    getattr(layer, f"lora_B{zeroed}").zero_()
            first = capture(net, FIRST_LAYER[family], lambda: net(x, t, s, cond))[1]
            with torch.no_grad():
                for name, layer in layers.items():
                    getattr(layer, f"lora_B{zeroed}").copy_(saved[name])
            assert float((first[:, kept] - base_first[:, kept]).abs().max()) <= 1e-6  # untouched by the other branch
            assert float((first[:, other] - base_first[:, other]).abs().max()) > 1e-5

        if family == "flux":  # [text | noise | condition] in the single block, by hand
            layer = layers["diffusion_model.single_blocks.0.linear1"]
            inp, out = capture(net, "single_blocks.0.linear1", lambda: net(x, t, s, cond))
            text = tiny_models.CONTEXT_TOKENS
            assert inp.shape[1] == text + 2 * 16
            assert float((out - by_hand(layer, inp, [(2, text), (1, 16), (2, 16)])).abs().max()) <= 1e-5
        if family == "lumina2":  # [text (padded to 32) | noise (16 + 16 padding) | condition] in the main block
            layer = layers["diffusion_model.layers.0.attention.qkv"]
            inp, out = capture(net, "layers.0.attention.qkv", lambda: net(x, t, s, cond))
            assert inp.shape[1] == 32 + 32 + 16
            assert float((out - by_hand(layer, inp, [(2, 32), (1, 32), (2, 16)])).abs().max()) <= 1e-5
        trainer.export(path, prefix=native.LORA_KEY_PREFIX, ema=False)

    # the MODEL as it was: weights, module tree, outputs
    model.unpatch_model()
    after_state = state_of(model)
    assert after_state.keys() == before_state.keys()
    assert all(torch.equal(after_state[k], before_state[k]) for k in before_state)
    assert not dual_branch_layers(model.model.diffusion_model)
    with torch.no_grad():
        assert float((flow_net(mods, model, positive)(x, t, s, cond) - base_out).abs().max()) == 0.0
    model.unpatch_model()

    with safe_open(str(path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert keys and all(k.rsplit(".", 2)[-2] in ("lora_A1", "lora_B1", "lora_A2", "lora_B2") for k in keys)
    info = json.loads(meta["onestep_sr_dual_branch"])
    assert info["split"] == "dual_branch_patch" and info["noise_scale"] == info["condition_scale"] == 1.0
    assert info["recipe"]["adapter"] == "dual_branch_lora" and info["recipe"]["test"] == family
    assert info["recipe"]["base_model"].startswith(type(model.model).__name__)

    loaded, _, report = mods["adapter_loading"].load_sr_adapter(model, str(path))
    assert f"MODEL (dual-branch): {len(keys) // 4} modules" in report and "branch scalings from the file" in report
    with torch.no_grad():
        load_error = float((flow_net(mods, loaded, positive)(x, t, s, cond) - trained).abs().max())
    print(f"{family}: trained vs base {float((trained - base_out).abs().max()):.3g}, loaded file vs trained "
          f"{load_error:.3g}")
    assert load_error <= 1e-5
    loaded.unpatch_model()
    with torch.no_grad():  # the adapter before the patch: the same
        reloaded, _, _ = mods["adapter_loading"].load_sr_adapter(tiny_models.build_model(family), str(path))
        assert float((flow_net(mods, dual.dual_branch_patch(reloaded), positive)(x, t, s, cond)
                      - trained).abs().max()) <= 1e-5
        plain = flow_net(mods, reloaded, positive)  # without the patch: refused by name
        plain.dual_options = None
        with pytest.raises(ValueError, match="OneStep SR Dual-Branch Patch"):
            plain(x, t, s, cond)
    reloaded.unpatch_model()
    comfy.model_management.unload_all_models()

    # ComfyUI's stock LoRA loader reads none of it (no weight patch), so it cannot mis-apply it
    stock, _ = comfy.sd.load_lora_for_models(model, None, load_file(str(path)), 1.0, 0.0)
    assert not stock.patches


UNSPLITTABLE = {"flux": "vector_in.in_layer", "qwen_image": "time_text_embed.timestep_embedder.linear_1",
                "sd3": "y_embedder.mlp.0", "sd35": "t_embedder.mlp.0", "lumina2": "t_embedder.mlp.0"}


@pytest.mark.parametrize("family", [*FAMILIES, "sd35"])
def test_every_default_target_splits_and_the_embedders_are_refused_by_name(mods, family):
    """Every default target of the patched model has a split that the patched forward calls where it can
    answer (SD3.5's x-block self-attention too: nonzero updates, no 'called outside' error); naming a time or
    pooled-vector embedder is refused with its name."""
    runs, splitting = mods["training_runs"], mods["dual_branch_lora"]
    model = mods["dual_branch"].dual_branch_patch(tiny_models.build_model(family))
    dm = model.get_model_object("diffusion_model")
    spec = runs.lora_spec(model, RANK, 0.0, "")
    splits = splitting.dual_branch_splits(dm, spec, prefix="diffusion_model.")
    assert all(splitting.layer_kind(splitting.family_of(dm), name.removeprefix("diffusion_model.")) is not None
               for name in splits)
    with pytest.raises(ValueError, match=f"cannot split by token.*{UNSPLITTABLE[family]}"):
        splitting.dual_branch_splits(dm, runs.lora_spec(model, RANK, 0.0, UNSPLITTABLE[family]))

    net = flow_net(mods, model, tiny_models.conditioning(family, seed=1))
    x, t, s, cond = probe_inputs()
    with torch.no_grad():
        base = net(x, t, s, cond)
    mods["dual_lora"].add_dual_branch_lora(net, spec, splits)
    try:
        with torch.no_grad():
            for i, layer in enumerate(mods["dual_lora"].dual_branch_layers(net).values()):
                layer.lora_B1.copy_(randn(*layer.lora_B1.shape, seed=2 * i) * 0.02)
                layer.lora_B2.copy_(randn(*layer.lora_B2.shape, seed=2 * i + 1) * 0.02)
            out = net(x, t, s, cond)
    finally:
        mods["dual_lora"].remove_dual_branch_lora(net)
        model.unpatch_model()
    assert torch.isfinite(out).all() and float((out - base).abs().max()) > 1e-4
