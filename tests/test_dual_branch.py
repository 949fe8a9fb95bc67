"""'OneStep SR Dual-Branch Patch' (bridge/dual_branch.py) on tiny native FLUX, SD3, Qwen-Image and Lumina 2 /
Z-Image models built from ComfyUI's own classes, in a real ComfyUI in-process.

Known answers: at s = t the patched model is the base model, so
- without an LR latent it equals the unpatched MODEL (every family);
- FLUX, Qwen-Image: with an LR latent it equals the unpatched diffusion model given that latent through
  ComfyUI's own reference-latent path with its RoPE positions set to the noise tokens' (ComfyUI's
  `process_img` called with index 0 and no offset), which is how the patch defines the shared positions;
- SD3, Lumina 2 (no reference-latent path in ComfyUI): with shared positions and one modulation the two
  halves are interchangeable, so the condition half's last hidden state for (x = A, LR = B) is the noise
  half's for (x = B, LR = A) (up to the order of attention's sums).
The ODTSR dual-branch reference is ODTSR's published layer, re-stated in tests/test_adapter_loading.py.
"""

import copy

import pytest
import torch

from onestep_sr.testing import comfy_host as host_lib
from onestep_sr.testing import tiny_models

pytestmark = pytest.mark.host
FAMILIES = ("flux", "sd3", "sd35", "qwen_image", "lumina2")  # sd35: SD3.5-medium's x-block self-attention
REFERENCE_FAMILIES = ("flux", "qwen_image")  # ComfyUI has a reference-latent path for these
EXACT = 1e-6
SIZE = 64  # pixels: 8x8 latents


@pytest.fixture(scope="module")
def dual(comfy_host):
    return comfy_host.module("bridge.dual_branch")


def randn(*shape, seed, std=1.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std


def inputs(family, seed=10):
    """(x, t, context, kwargs) for the diffusion model's forward (SD3: for apply_model, t a sigma); t = 0.6."""
    x = randn(1, 16, *((1,) if family == "qwen_image" else ()), 8, 8, seed=seed)
    context = randn(1, tiny_models.CONTEXT_TOKENS, 32, seed=seed + 1)
    kwargs = {"flux": {"y": randn(1, 32, seed=seed + 2), "guidance": torch.tensor([3.5])},
              "sd3": {"y": randn(1, 32, seed=seed + 2)}, "sd35": {"y": randn(1, 32, seed=seed + 2)},
              "lumina2": {"num_tokens": tiny_models.CONTEXT_TOKENS}}.get(family, {})
    return x, torch.tensor([0.6]), context, kwargs


def forward(model, family, x, t, context, options, kwargs):
    """The call the patch wraps: SD3 through BaseModel.apply_model, the others their diffusion model."""
    if family in ("sd3", "sd35"):
        return model.apply_model(x, t, c_crossattn=context, transformer_options=options, **kwargs)
    return model.diffusion_model(x, t, context, transformer_options=options, **kwargs)


def lr_latent(family, seed=20):
    return randn(1, 16, *((1,) if family == "qwen_image" else ()), 8, 8, seed=seed)


def run(patcher, family, *, s=None, lr=None, refs=None, seed=10, x=None):
    """The diffusion model's output with the patcher's patches on (ComfyUI's loading), then unpatched."""
    import comfy.model_management

    x_default, t, context, kwargs = inputs(family, seed)
    x = x_default if x is None else x
    options = copy.copy(patcher.model_options["transformer_options"])
    if s is not None:
        options["onestep_sr_target"] = {"sigma_to": s, "family": "dual_branch"}
    if lr is not None:
        options["onestep_sr_condition"] = lr
    if refs is not None:
        kwargs["ref_latents"] = refs
    comfy.model_management.load_models_gpu([patcher])
    try:
        with torch.no_grad():
            return forward(patcher.model, family, x, t, context, options, kwargs)
    finally:
        patcher.unpatch_model()


def shared_position_reference(model_patcher, family, lr):
    """The unpatched diffusion model with `lr` as its reference latent at the noise tokens' positions."""
    reference = copy.deepcopy(model_patcher.model.diffusion_model)
    original = reference.process_img
    reference.process_img = lambda x, index=0, h_offset=0, w_offset=0, **kw: original(x, 0, 0, 0, **kw)
    x, t, context, kwargs = inputs(family)
    with torch.no_grad():
        return reference(x, t, context, ref_latents=[lr], **kwargs)


def max_diff(a, b):
    return float((a - b).detach().abs().max())


@pytest.mark.parametrize("family", FAMILIES)
def test_s_equal_t_is_the_unpatched_model(dual, family):
    base = tiny_models.build_model(family)
    patched = dual.dual_branch_patch(base)
    expected = run(base, family)
    assert max_diff(run(patched, family), expected) <= EXACT  # no target: s = t
    assert max_diff(run(patched, family, s=0.6), expected) <= EXACT
    assert max_diff(run(patched, family, s=0.2), expected) > 1e-3  # s feeds the second embedder


@pytest.mark.parametrize("family", REFERENCE_FAMILIES)
def test_lr_tokens_share_the_noise_tokens_positions(dual, family):
    base = tiny_models.build_model(family)
    patched = dual.dual_branch_patch(base)
    lr = lr_latent(family)
    expected = shared_position_reference(base, family, lr)
    assert max_diff(run(patched, family, lr=lr), expected) <= EXACT
    assert max_diff(run(patched, family, lr=lr, s=0.6), expected) <= EXACT
    # the LR matters, and ComfyUI's own reference positions (index 1) are not what the patch uses
    assert max_diff(expected, run(base, family)) > 1e-3
    assert max_diff(expected, run(base, family, refs=[lr])) > 1e-4
    # an LR on the conditioning (one reference latent) is taken as the condition too
    assert max_diff(run(patched, family, refs=[lr]), expected) <= EXACT
    assert max_diff(run(patched, family, lr=lr, s=0.1), expected) > 1e-3


@pytest.mark.parametrize("family", ("sd3", "sd35", "lumina2"))
def test_lr_and_noise_halves_are_interchangeable_at_s_equal_t(dual, family):
    base = tiny_models.build_model(family)
    patched = dual.dual_branch_patch(base)
    final = patched.get_model_object("diffusion_model.final_layer")
    seen = []
    handle = final.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        a, b = inputs(family, seed=10)[0], lr_latent(family)
        with_lr = run(patched, family, x=a, lr=b)
        run(patched, family, x=b, lr=a)
        far = run(patched, family, x=a, lr=b, s=0.1)
    finally:
        handle.remove()
    n, pad = 16, (16 if family == "lumina2" else 0)  # 8x8 latent, patch 2; Lumina pads x to 32 tokens
    first, swapped = seen[:2]  # final-layer inputs: SD3 [noise | LR], Lumina [text | noise | pad | LR]
    noise_a, noise_b = (h[:, h.shape[1] - 2 * n - pad:h.shape[1] - n - pad] for h in (first, swapped))
    condition_b = first[:, -n:]
    assert first.shape[1] == swapped.shape[1] and max_diff(noise_a, noise_b) > 1e-3
    assert max_diff(condition_b, noise_b) <= 1e-5  # the LR half of (A, B) is the noise half of (B, A)
    assert max_diff(with_lr, run(base, family, x=a)) > 1e-3 and max_diff(far, with_lr) > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_patch_comes_off_cleanly(dual, family):
    import comfy.model_management

    base = tiny_models.build_model(family)
    lr = lr_latent(family)
    before = run(base, family)
    patched = dual.dual_branch_patch(base)
    full = run(patched, family, lr=lr, s=0.25)
    assert max_diff(run(base, family), before) <= EXACT  # unpatch_model
    if family in REFERENCE_FAMILIES:
        before_ref = run(base, family, refs=[lr])
        assert max_diff(run(dual.dual_branch_patch(base), family, refs=[lr]), before_ref) > 1e-4
        assert max_diff(run(base, family, refs=[lr]), before_ref) <= EXACT

    comfy.model_management.load_models_gpu([patched])
    comfy.model_management.unload_all_models()
    assert max_diff(run(base, family), before) <= EXACT

    # lowvram / offload: a partial load (most weights cast per layer) gives the same outputs, then comes off
    x, t, context, kwargs = inputs(family)
    options = {**patched.model_options["transformer_options"], "onestep_sr_condition": lr,
               "onestep_sr_target": {"sigma_to": 0.25, "family": "dual_branch"}}
    patched.patch_model(device_to=patched.load_device, lowvram_model_memory=1, load_weights=True)
    try:
        lowvram_layers = sum(getattr(m, "comfy_cast_weights", False) for m in patched.model.modules())
        with torch.no_grad():
            partial = forward(patched.model, family, x, t, context, options, kwargs)
    finally:
        patched.unpatch_model()
    assert lowvram_layers > 0
    assert max_diff(partial, full) <= EXACT
    assert max_diff(run(base, family), before) <= EXACT
    assert not any(type(m).__name__.startswith(("DualTime", "Row", "TokenRows", "Broadcast", "NoiseFinal",
                                                 "ConditionTokens", "Neutral", "TokenModulated", "DualBranch", "PerRow"))
                   for m in base.model.modules())


def test_unsupported_models_are_refused_by_name(dual):
    with pytest.raises(ValueError, match="FLUX.1, SD3 \\(MMDiT\\), Qwen-Image and Lumina 2"):
        dual.dual_branch_patch(tiny_models.build_model("sd2"))


def test_a_stock_lora_on_the_patched_model_equals_stock(dual, comfy_host):
    """ComfyUI's own LoRA loader on the patched MODEL: at s = t it gives the stock LoRA'd model's output."""
    import comfy.sd

    base = tiny_models.build_model("flux")
    weights = base.model.diffusion_model.state_dict()
    lora = {}
    for i, name in enumerate(("double_blocks.0.img_attn.qkv", "single_blocks.0.linear1", "time_in.in_layer")):
        weight = weights[f"{name}.weight"]
        lora[f"diffusion_model.{name}.lora_down.weight"] = randn(4, weight.shape[1], seed=30 + i, std=0.3)
        lora[f"diffusion_model.{name}.lora_up.weight"] = randn(weight.shape[0], 4, seed=40 + i, std=0.3)
    stock, _ = comfy.sd.load_lora_for_models(base, None, lora, 0.8, 0)
    on_patched, _ = comfy.sd.load_lora_for_models(dual.dual_branch_patch(base), None, lora, 0.8, 0)
    assert max_diff(run(on_patched, "flux"), run(stock, "flux")) <= EXACT
    assert max_diff(run(stock, "flux"), run(base, "flux")) > 1e-3


# ---------------------------------------------------------------- ODTSR's dual-branch LoRA file

def test_odtsr_file_applies_to_the_patched_model(dual, comfy_host, tmp_path):
    """Load SR Adapter's dual-branch LoRA on the patched Qwen-Image equals ODTSR's layer applied by hand to
    the shared-position reference model (at s = t, the LR as the condition tokens)."""
    from safetensors.torch import save_file

    adapter = comfy_host.module("bridge.adapter_loading")
    base = tiny_models.build_model("qwen_image")
    weights, rank, strength = base.model.diffusion_model.state_dict(), 4, 0.8
    modules = ("img_in", "transformer_blocks.0.attn.to_q", "transformer_blocks.0.img_mlp.net.2",
               "transformer_blocks.0.img_mod.1")
    parts = {}
    for i, path in enumerate(modules):
        weight = weights[f"{path}.weight"]
        parts[path] = {"lora_A1": randn(rank, weight.shape[1], seed=60 + i, std=0.3),
                       "lora_B1": randn(weight.shape[0], rank, seed=70 + i, std=0.3),
                       "lora_A2": randn(rank, weight.shape[1], seed=80 + i, std=0.3),
                       "lora_B2": randn(weight.shape[0], rank, seed=90 + i, std=0.3)}
    save_file({f"pipe.dit.{p}.{n}.weight": t for p, ps in parts.items() for n, t in ps.items()},
              tmp_path / "dual.safetensors")
    from test_adapter_loading import ODTSRDualLoRALinear, odtsr_modulate  # ODTSR's layer, re-stated there

    reference = copy.deepcopy(base.model.diffusion_model)
    for path, ps in parts.items():
        parent, _, child = path.rpartition(".")
        holder = reference.get_submodule(parent) if parent else reference
        setattr(holder, child, ODTSRDualLoRALinear(getattr(holder, child), ps, strength * 0.5, strength * 1.5))
    reference.transformer_blocks[0]._modulate = odtsr_modulate
    original = reference.process_img
    reference.process_img = lambda x, index=0, h_offset=0, w_offset=0, **kw: original(x, 0, 0, 0, **kw)
    lr = lr_latent("qwen_image")
    x, t, context, _ = inputs("qwen_image")
    with torch.no_grad():
        expected = reference(x, t, context, ref_latents=[lr])

    for first_patch in (True, False):  # the patch before or after the adapter
        model = dual.dual_branch_patch(base) if first_patch else base
        model, _, report = adapter.load_sr_adapter(model, str(tmp_path / "dual.safetensors"), strength,
                                                   noise_scale=0.5, condition_scale=1.5)
        model = model if first_patch else dual.dual_branch_patch(model)
        assert f"MODEL (dual-branch): {len(modules)} modules" in report
        assert max_diff(run(model, "qwen_image", lr=lr), expected) <= EXACT
        assert max_diff(run(model, "qwen_image", lr=lr, s=0.6), expected) <= EXACT
    assert max_diff(expected, shared_position_reference(base, "qwen_image", lr)) > 1e-3


# ---------------------------------------------------------------- sampling through SamplerCustomAdvanced

def dual_prompt(family, steps, sampler_family="dual_branch", patch=True):
    graph = host_lib.new_graph()
    model = graph.node("TinyModel", family=family)
    if patch:
        model = graph.node("OneStepSR_DualBranchPatch", model=model.out(0))
    vae = graph.node("VAELoader", vae_name=tiny_models.VAE_FILES[16])
    image = graph.node("EmptyImage", width=SIZE, height=SIZE, batch_size=1, color=0x3080C0)
    latent = graph.node("VAEEncode", pixels=image.out(0), vae=vae.out(0))
    guider = graph.node("BasicGuider", model=model.out(0),
                        conditioning=graph.node("TinyConditioning", family=family, seed=1).out(0))
    sampler = graph.node("OneStepSR_FlowMapSampler", family=sampler_family, start_mode="lr", gamma=0.0,
                         bridge_scale=1.0)
    sigmas = graph.node("OneStepSR_Schedule", model=model.out(0), steps=steps, t_start=1.0, shift=1.0)
    sampled = graph.node("SamplerCustomAdvanced", noise=graph.node("RandomNoise", noise_seed=0).out(0),
                         guider=guider.out(0), sampler=sampler.out(0), sigmas=sigmas.out(0),
                         latent_image=latent.out(0))
    graph.node("SaveLatent", samples=sampled.out(0), filename_prefix="onestep-sr-test/dual")  # an output node
    return graph.finalize(), {"model": model.id, "latent": latent.id, "sampled": sampled.id}


@pytest.mark.parametrize("family", FAMILIES)
def test_dual_branch_family_samples_1_2_4_steps(dual, comfy_host, family):
    results = {}
    for steps in (1, 2, 4):
        prompt, ids = dual_prompt(family, steps)
        done = comfy_host.run_prompt(prompt).check()
        results[steps] = done.output(ids["sampled"])["samples"]
        assert torch.isfinite(results[steps]).all()
    # one step: the LR latent at t = 1 jumps to 0 with s = 0 on the second embedder and the LR as condition
    import comfy.model_management

    patched, lr = done.output(ids["model"]), done.output(ids["latent"])["samples"]
    model_lr = patched.model.process_latent_in(lr.unsqueeze(2) if family == "qwen_image" else lr)
    [[context, extras]] = tiny_models.conditioning(family, seed=1)
    kwargs = {"flux": {"y": extras.get("pooled_output"), "guidance": torch.tensor([3.5])},
              "sd3": {"y": extras.get("pooled_output")}, "sd35": {"y": extras.get("pooled_output")},
              "lumina2": {"num_tokens": context.shape[1]}}.get(family, {})
    options = {**patched.model_options["transformer_options"], "onestep_sr_condition": model_lr,
               "onestep_sr_target": {"sigma_to": 0.0, "family": "dual_branch"}}
    comfy.model_management.load_models_gpu([patched])
    with torch.no_grad():
        denoised = patched.model.apply_model(model_lr, torch.tensor([1.0]), c_crossattn=context,
                                             transformer_options=options, **kwargs)
    patched.unpatch_model()
    expected = patched.model.process_latent_out(denoised).reshape(results[1].shape)
    assert max_diff(results[1], expected) <= 1e-5
    assert max_diff(results[1], results[2]) > 1e-4 and max_diff(results[2], results[4]) > 1e-4

    plain = comfy_host.run_prompt(dual_prompt(family, 1, sampler_family="plain")[0]).check()
    assert max_diff(plain.output(ids["sampled"])["samples"], results[1]) > 1e-4  # no target, no LR tokens


def test_unpatched_model_is_refused_for_the_dual_branch_family(comfy_host):
    failed = comfy_host.run_prompt(dual_prompt("flux", 1, patch=False)[0])
    reason = failed.failure()
    assert reason is not None and "family 'dual_branch'" in reason and "OneStep SR Dual-Branch Patch" in reason
    assert "set the sampler's family to 'auto'" in reason


@pytest.mark.parametrize("family", ["sd3", "lumina2"])
def test_dual_branch_lora_files_are_refused_where_the_patch_splits_layers(dual, comfy_host, tmp_path, family):
    from safetensors.torch import save_file

    adapter = comfy_host.module("bridge.adapter_loading")
    base = tiny_models.build_model(family)
    name, weight = next((k[:-len(".weight")], v) for k, v in base.model.diffusion_model.state_dict().items()
                        if k.endswith(".weight") and v.ndim == 2)
    parts = {f"{name}.{p}.weight": randn(*shape, seed=i) for i, (p, shape) in enumerate(
        (("lora_A1", (2, weight.shape[1])), ("lora_B1", (weight.shape[0], 2)),
         ("lora_A2", (2, weight.shape[1])), ("lora_B2", (weight.shape[0], 2))))}
    save_file(parts, tmp_path / "dual.safetensors")
    with pytest.raises(ValueError, match="do not combine"):
        adapter.load_sr_adapter(dual.dual_branch_patch(base), str(tmp_path / "dual.safetensors"))
    loaded, _, _ = adapter.load_sr_adapter(base, str(tmp_path / "dual.safetensors"))
    with pytest.raises(ValueError, match="do not combine"):
        dual.dual_branch_patch(loaded)


@pytest.mark.parametrize("family", ["sd3", "lumina2"])
def test_one_click_upscale_runs_the_patched_model_with_guidance(dual, comfy_host, family):
    """OneStep SR Upscale (advanced) on a patched MODEL: family auto is dual_branch; guidance 2 batches the
    positive and negative branches, each with the LR tile as its condition tokens."""
    upscale = comfy_host.module("bridge.upscale")
    base = tiny_models.build_model(family)
    image = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(3))
    args = dict(vae=tiny_models.build_vae(16), image=image, scale_by=4.0, family="auto", start_mode="lr",
                t_start=1.0, shift=1.0, gamma=0.0, bridge_scale=1.0, guidance=2.0, seed=0,
                positive=tiny_models.conditioning(family), negative=tiny_models.conditioning(family, seed=1))
    outs = {steps: upscale.upscale(model=dual.dual_branch_patch(base), steps=steps, **args) for steps in (1, 2)}
    plain = upscale.upscale(model=base, steps=1, **args)
    assert outs[1].shape == plain.shape == (1, 64, 64, 3) and torch.isfinite(outs[1]).all()
    assert max_diff(outs[1], plain) > 1e-3 and max_diff(outs[1], outs[2]) > 1e-3
