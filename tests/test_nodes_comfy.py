"""The extension's nodes on native ComfyUI models, in a real ComfyUI imported in-process.

Tiny randomly initialised FLUX, SD3 and SD2 (eps and v) models built from ComfyUI's own classes
(testing/tiny_models.py) run through SamplerCustomAdvanced with the extension's SAMPLER, SIGMAS,
GUIDER and conditioning nodes, and through the one-click node; the two must agree exactly.
Network calls are counted and their inputs recorded through ComfyUI's own model wrapper hook.
"""

import math

import pytest
import torch

from onestep_sr.testing import tiny_models

pytestmark = pytest.mark.host

FLOW_FAMILIES = ("flux", "sd3")
ALL_FAMILIES = ("flux", "sd3", "sd2", "sd2_v")
LR_H, LR_W, SCALE = 12, 17, 2  # odd on purpose: the output must still be exactly x2


def start_for(family):
    """(start mode, t_start) valid for the family: eps/v models start from the noised LR."""
    return ("lr", 1.0) if family in FLOW_FAMILIES else ("noised_lr", 0.6)


@pytest.fixture(scope="module")
def ext(comfy_host):
    """The extension's bridge modules as ComfyUI loaded them."""
    return {name: comfy_host.module(f"bridge.{name}") for name in ("upscale", "sampling", "latents", "default_model")}


def lr_image(seed=0, height=LR_H, width=LR_W, channels=3):
    return torch.rand(1, height, width, channels, generator=torch.Generator().manual_seed(seed))


class CallLog:
    """A ComfyUI unet function wrapper that records every network call (input, sigma, batch)."""

    def __init__(self):
        self.calls = []

    def __call__(self, apply_model, args):
        self.calls.append({"x": args["input"].clone(), "sigma": float(args["timestep"].max()),
                           "batch": args["input"].shape[0]})
        return apply_model(args["input"], args["timestep"], **args["c"])


def logged_model(family):
    model = tiny_models.build_model(family).clone()
    log = CallLog()
    model.set_model_unet_function_wrapper(log)
    return model, log


def one_click(ext, model, kind, image=None, steps=1, guidance=1.0, seed=0, **overrides):
    """The one-click node's function on a tiny model of `kind`; keyword overrides win."""
    start_mode, t_start = start_for(kind)
    args = dict(model=model, vae=tiny_models.build_vae(tiny_models.FAMILIES[kind]["latent_channels"]),
                image=lr_image() if image is None else image, scale_by=float(SCALE), steps=steps, family="auto",
                start_mode=start_mode, t_start=t_start, shift=1.0, gamma=0.0, bridge_scale=1.0, guidance=guidance,
                seed=seed, positive=tiny_models.conditioning(kind), negative=tiny_models.conditioning(kind, seed=1))
    args.update(overrides)
    return ext["upscale"].upscale(**args)


def graph_prompt(comfy_host, family, steps, guidance, seed=0):
    """SamplerCustomAdvanced fed by the extension's graph blocks, as the shipped workflows wire them."""
    start_mode, t_start = start_for(family)
    g = comfy_host.graph()
    if family in tiny_models.MODEL_FILES:
        model = g.node("UNETLoader", unet_name=tiny_models.MODEL_FILES[family], weight_dtype="default")
    else:
        model = g.node("TinyModel", family=family)
    vae = g.node("VAELoader", vae_name=tiny_models.VAE_FILES[tiny_models.FAMILIES[family]["latent_channels"]])
    image = g.node("EmptyImage", width=LR_W, height=LR_H, batch_size=1, color=0x3366CC)
    pos = g.node("TinyConditioning", family=family, seed=0)
    neg = g.node("TinyConditioning", family=family, seed=1)
    cond = g.node("OneStepSR_Conditioning", image=image.out(0), vae=vae.out(0), scale_by=float(SCALE), width=0,
                  height=0, upscale_method="bicubic", lr_as_reference=False, vae_tile_size=1024,
                  positive=pos.out(0), negative=neg.out(0))
    sigmas = g.node("OneStepSR_Schedule", model=model.out(0), steps=steps, t_start=t_start, shift=1.0)
    sampler = g.node("OneStepSR_FlowMapSampler", family="auto", start_mode=start_mode, gamma=0.0, bridge_scale=1.0)
    guider = g.node("OneStepSR_Guider", model=model.out(0), positive=cond.out(0), negative=cond.out(1),
                    scale=guidance, start_t=1.0, end_t=0.0)
    noise = g.node("RandomNoise", noise_seed=seed)
    sampled = g.node("SamplerCustomAdvanced", noise=noise.out(0), guider=guider.out(0), sampler=sampler.out(0),
                     sigmas=sigmas.out(0), latent_image=cond.out(2))
    decoded = g.node("OneStepSR_Decode", samples=sampled.out(0), vae=vae.out(0), vae_tile_size=1024)
    g.node("PreviewImage", images=decoded.out(0))
    return g.finalize(), decoded.id


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_graph_form_runs_through_sampler_custom_advanced(comfy_host, family):
    prompt, decoded = graph_prompt(comfy_host, family, steps=2, guidance=2.0)
    run = comfy_host.run_prompt(prompt).check()
    image = run.output(decoded)
    assert image.shape == (1, SCALE * LR_H, SCALE * LR_W, 3)
    assert torch.isfinite(image).all()


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_one_click_equals_the_graph_form(comfy_host, ext, family):
    prompt, decoded = graph_prompt(comfy_host, family, steps=2, guidance=2.0, seed=5)
    graph_image = comfy_host.run_prompt(prompt).check().output(decoded)
    image = torch.zeros(1, LR_H, LR_W, 3)
    image[..., 0], image[..., 1], image[..., 2] = 0x33 / 255, 0x66 / 255, 0xCC / 255  # EmptyImage's colour
    model = tiny_models.build_model(family)
    out = one_click(ext, model, family, image, steps=2, guidance=2.0, seed=5)
    assert out.shape == graph_image.shape
    assert (out - graph_image).abs().max() <= 1e-5


@pytest.mark.parametrize("family", FLOW_FAMILIES)
def test_lr_start_feeds_the_lr_latent_unnoised(ext, family):
    model, log = logged_model(family)
    image = lr_image()
    one_click(ext, model, family, image, steps=1)
    vae = tiny_models.build_vae(tiny_models.FAMILIES[family]["latent_channels"])
    latent = ext["latents"].encode_lr(vae, image, SCALE * LR_W, SCALE * LR_H)["samples"]
    expected = model.model.process_latent_in(latent)
    assert log.calls[0]["sigma"] == 1.0
    assert torch.allclose(log.calls[0]["x"], expected, atol=1e-5)


def test_noised_lr_start_on_an_eps_model_is_comfyuis_img2img_point(ext):
    model, log = logged_model("sd2")
    image = lr_image()
    one_click(ext, model, "sd2", image, steps=1, seed=3)
    vae = tiny_models.build_vae(4)
    import comfy.sample
    latent = model.model.process_latent_in(ext["latents"].encode_lr(vae, image, SCALE * LR_W, SCALE * LR_H)["samples"])
    sigma = log.calls[0]["sigma"]
    noise = comfy.sample.prepare_noise(latent, 3)
    # ComfyUI's eps scaling: x = latent + sigma * noise, then the model sees it through calculate_input
    assert sigma == pytest.approx(float(model.model.model_sampling.percent_to_sigma(0.4)), rel=1e-5)
    expected_x = (latent + sigma * noise)
    assert torch.allclose(log.calls[0]["x"], expected_x, atol=1e-4)


@pytest.mark.parametrize("guidance, batches", [(1.0, [1, 1, 1]), (2.5, [2, 2, 2])])
def test_guidance_costs_one_batched_call_per_step(ext, guidance, batches):
    model, log = logged_model("sd3")
    one_click(ext, model, "sd3", lr_image(), steps=3, guidance=guidance)
    assert [call["batch"] for call in log.calls] == batches


def test_guidance_scale_one_equals_positive_only_and_zero_equals_negative(ext):
    image = lr_image(1)
    positive_only = one_click(ext, tiny_models.build_model("sd3"), "sd3", image, steps=2, guidance=1.0)
    negative_as_positive = one_click(ext, tiny_models.build_model("sd3"), "sd3", image, steps=2, guidance=1.0,
                                     positive=tiny_models.conditioning("sd3", seed=1))
    w0 = one_click(ext, tiny_models.build_model("sd3"), "sd3", image, steps=2, guidance=0.0)
    assert (w0 - negative_as_positive).abs().max() <= 1e-5
    assert (positive_only - negative_as_positive).abs().max() > 1e-3  # the two prompts do differ


def test_guidance_interval_switches_guidance_off_outside(ext):
    model, log = logged_model("sd3")
    guider = ext["sampling"].flow_map_guider(model, tiny_models.conditioning("sd3"),
                                                   tiny_models.conditioning("sd3", seed=1), 3.0, t_lo=0.0, t_hi=0.5)
    sampler = ext["sampling"].flow_map_sampler("lr", gamma=0.0)
    sigmas = ext["sampling"].flow_map_sigmas(model, 4, 1.0, 1.0)  # 1, .75, .5, .25, 0
    latent = torch.randn(1, 16, 4, 4)
    guider.sample(torch.zeros_like(latent), latent, sampler, sigmas, seed=0)
    assert [call["batch"] for call in log.calls] == [1, 1, 2, 2]


def test_sigmas_follow_the_model(comfy_host, ext):
    schedule = ext["sampling"].flow_map_sigmas
    flow = schedule(tiny_models.build_model("sd3"), 4, 1.0, 1.0)
    assert torch.allclose(flow, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    eps_model = tiny_models.build_model("sd2")
    eps = schedule(eps_model, 2, 1.0, 1.0)
    assert eps[0] == pytest.approx(float(eps_model.model.model_sampling.sigma_max), rel=1e-5)
    assert eps[-1] == 0.0 and eps[0] > eps[1] > 0


def test_decode_crops_to_the_exact_size_and_keeps_alpha(ext):
    vae = tiny_models.build_vae(16)
    image = lr_image(channels=4)
    image[..., 3] = 0.25
    latent = ext["latents"].encode_lr(vae, image, 3 * LR_W, 3 * LR_H)
    assert latent["samples"].shape[-2:] == (-(-3 * LR_H // 8), -(-3 * LR_W // 8))
    out = ext["latents"].decode_sr(vae, latent)
    assert out.shape == (1, 3 * LR_H, 3 * LR_W, 4)
    assert torch.allclose(out[..., 3], torch.full_like(out[..., 3], 0.25), atol=1e-3)


def test_tiled_sampling_is_seamless(ext):
    """Blended 128 px tiles (16 latent cells, 64 px overlap) against one whole-latent pass."""
    image = lr_image(2, 96, 128)  # a 24 x 32 latent at x2
    whole = one_click(ext, tiny_models.build_model("sd2"), "sd2", image, steps=1, tile_size=0, t_start=0.3)
    assert whole.shape == (1, 192, 256, 3)
    model, log = logged_model("sd2")
    tiled = one_click(ext, model, "sd2", image, steps=1, tile_size=128, t_start=0.3)
    assert len(log.calls) > 1 and max(max(call["x"].shape[-2:]) for call in log.calls) <= 16
    psnr = -10 * math.log10(float(((tiled - whole) ** 2).mean().detach()))
    assert psnr >= 40.0  # measured 65 dB
    # tile_overlap 16 px (2 cells) instead of the automatic 64 px (8): the same 2 x 3 tiles cover the
    # latent with less overlap, so they shrink from 16 x 16 to 13 x 12 cells (tiling.balanced_tile)
    model, narrow = logged_model("sd2")
    one_click(ext, model, "sd2", image, steps=1, tile_size=128, t_start=0.3, tile_overlap=16)
    assert {tuple(call["x"].shape[-2:]) for call in narrow.calls} == {(13, 12)}


def test_out_of_memory_halves_the_tile_and_finishes(ext):
    model = tiny_models.build_model("sd3").clone()
    sizes = []

    def oom_above_20_cells(apply_model, args):
        side = max(args["input"].shape[-2:])
        sizes.append(side)
        if side > 20:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return apply_model(args["input"], args["timestep"], **args["c"])

    model.set_model_unet_function_wrapper(oom_above_20_cells)
    image = lr_image(4, 160, 160)  # a 40 x 40 latent at x2
    out = one_click(ext, model, "sd3", image, steps=1, tile_size=0)
    assert out.shape == (1, 320, 320, 3)
    assert sizes[0] == 40 and max(sizes[1:]) <= 20  # whole latent first, then halved tiles


@pytest.mark.parametrize("bad, message", [
    (dict(family="shortcut"), "family"),
    (dict(start_mode="bogus"), "start_mode must be one of"),
    (dict(image=torch.rand(1, 1, 1, 3)), "needs at least"),
    (dict(positive=None), "positive"),
    (dict(guidance=2.0, negative=None), "negative"),
    (dict(tile_size=32), "tile_size"),
])
def test_bad_inputs_raise_clear_errors(ext, bad, message):
    with pytest.raises(ValueError, match=message):
        one_click(ext, tiny_models.build_model("sd3"), "sd3", **bad)


def test_lr_start_on_an_eps_model_is_refused_with_the_fix(ext):
    with pytest.raises(ValueError, match="flow-matching MODEL"):
        one_click(ext, tiny_models.build_model("sd2"), "sd2", start_mode="lr", t_start=1.0)


def test_steps_below_one_fail_validation(comfy_host):
    prompt, _ = graph_prompt(comfy_host, "sd3", steps=1, guidance=1.0)
    for node in prompt.values():
        if node["class_type"] == "OneStepSR_Schedule":
            node["inputs"]["steps"] = 0
    run = comfy_host.run_prompt(prompt)
    assert not run.valid
    assert "steps" in run.failure()


def test_cancel_stops_the_node_within_one_tile(ext):
    import comfy.model_management

    model = tiny_models.build_model("sd3").clone()
    calls = []

    def interrupt_during_third_tile(apply_model, args):
        calls.append(args["input"].shape)
        if len(calls) == 3:
            comfy.model_management.interrupt_current_processing(True)  # what ComfyUI's Cancel does
        return apply_model(args["input"], args["timestep"], **args["c"])

    model.set_model_unet_function_wrapper(interrupt_during_third_tile)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            one_click(ext, model, "sd3", lr_image(4, 160, 160), steps=1, tile_size=128)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert len(calls) == 3  # the tile in flight finished, no further tile started


def _random_default_model(tmp_path, **config):
    from onestep_sr.models.flow_map_sr import FlowMapSRNet, save_model

    torch.manual_seed(0)
    net = FlowMapSRNet(width=16, blocks=2, **config).eval()
    for parameter in net.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    save_model(net, str(tmp_path / "net.safetensors"))
    return net, str(tmp_path / "net.safetensors")


def _one_click(ext, model, vae, image, guidance=1.0, steps=2):
    return ext["upscale"].upscale(model=model, vae=vae, image=image, scale_by=4.0, steps=steps, family="auto",
                                       start_mode="lr", t_start=1.0, shift=1.0, gamma=0.0, bridge_scale=1.0,
                                       guidance=guidance, seed=0)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
# (no condition, noise on the LR source: the node draws ComfyUI's noise) and (the LR stacked on
# channels as c_concat, no source noise: the node draws none)
@pytest.mark.parametrize("condition,source_noise", [(False, 0.1), (True, 0.0)])
@pytest.mark.parametrize("route", ["as loaded", "through ComfyUI's sampler"])
def test_default_model_node_equals_the_pure_pipeline(ext, tmp_path, guidance, condition, source_noise, route):
    from onestep_sr.models.pipeline import upscale

    net, path = _random_default_model(tmp_path, condition=condition, source_noise=source_noise)
    model, vae = ext["default_model"].load_default_model(path)
    log = None
    if route != "as loaded":  # any sampling hook sends the node through ComfyUI's sampler
        model, log = model.clone(), CallLog()
        model.set_model_unet_function_wrapper(log)
    image = lr_image(3)
    out = _one_click(ext, model, vae, image, guidance)
    reference = upscale(net, image.permute(0, 3, 1, 2), 4, steps=2, guidance=guidance).permute(0, 2, 3, 1)
    assert out.shape == (1, 4 * LR_H, 4 * LR_W, 3)
    assert (out - reference).abs().max() <= 1e-5
    if log is not None:
        assert len(log.calls) == 2
    if guidance != 1.0:
        plain = upscale(net, image.permute(0, 3, 1, 2), 4, steps=2).permute(0, 2, 3, 1)
        assert (out - plain).abs().max() > 1e-3  # the softened negative branch does steer


def test_unhooked_default_model_skips_comfyuis_sampler_and_keeps_its_lora(ext, tmp_path, monkeypatch):
    """With no sampling hook the one-click node runs the pure pipeline on the MODEL's patched
    weights: ComfyUI's sampling function is never called, and a weight patch (what ComfyUI's LoRA
    loaders add) still applies, and is removed again for the unpatched MODEL."""
    import comfy.samplers

    _, path = _random_default_model(tmp_path)
    model, vae = ext["default_model"].load_default_model(path)
    patched = model.clone()
    key = "diffusion_model.net.conv_out.weight"
    assert patched.add_patches({key: (torch.randn_like(patched.model.state_dict()[key]) * 0.1,)}, 1.0) == [key]
    image = lr_image(4)
    hooked = patched.clone()
    hooked.set_model_unet_function_wrapper(CallLog())
    through_comfy = _one_click(ext, hooked, vae, image, steps=1)
    base = _one_click(ext, model, vae, image, steps=1)

    def refuse(*args, **kwargs):
        raise AssertionError("the unhooked default model went through ComfyUI's sampling function")

    monkeypatch.setattr(comfy.samplers, "sampling_function", refuse)
    direct = _one_click(ext, patched, vae, image, steps=1)
    assert (direct - through_comfy).abs().max() <= 1e-5
    assert (direct - base).abs().max() > 1e-3
    assert torch.equal(_one_click(ext, model, vae, image, steps=1), base)


def test_default_model_is_built_from_comfyuis_operations(ext, tmp_path):
    """Every convolution and linear layer of the loaded default model is one of ComfyUI's operations, so
    manual casting reaches them: built from comfy.ops.manual_cast with bf16 weights, it computes in the
    input's float32 and lands within bf16's rounding of the float32 network."""
    import comfy.ops

    net, path = _random_default_model(tmp_path)
    model, _ = ext["default_model"].load_default_model(path)
    layers = [m for m in model.model.diffusion_model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert layers and all(isinstance(m, comfy.ops.CastWeightBiasOp) for m in layers)

    cast = ext["default_model"].FlowMapSRDiffusionModel(net.config, operations=comfy.ops.manual_cast,
                                                        dtype=torch.bfloat16)
    cast.net.load_state_dict(net.state_dict())
    assert cast.net.conv_in.weight.dtype == torch.bfloat16
    x, t = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0.7])
    with torch.no_grad():
        out, reference = cast(x, t), net(x, t, t, None)
    assert out.dtype == torch.float32
    assert 0 < (out - reference).abs().max() < 0.05 * reference.abs().max()


class InputDtypes:
    """A forward pre-hook recording the dtype of every input a layer computes on."""

    def __init__(self, layer):
        self.seen = set()
        layer.register_forward_pre_hook(lambda _, args: self.seen.add(args[0].dtype))


# (ComfyUI's flag, the weight dtype it asks for, the largest |difference| from float32 its rounding allows:
# fp16 keeps 11 significant bits, bf16 8)
WEIGHT_FLAGS = [("fp16_unet", torch.float16, 0.01), ("bf16_unet", torch.bfloat16, 0.05)]


@pytest.mark.parametrize("flag, weight_dtype, bound", WEIGHT_FLAGS)
@pytest.mark.parametrize("route", ["as loaded", "through ComfyUI's sampler"])
def test_default_model_takes_comfyuis_weight_dtype_and_manual_cast(ext, tmp_path, monkeypatch, flag, weight_dtype,
                                                                  bound, route):
    """--fp16-unet / --bf16-unet give the default model half-precision weights, as they give native models; on a
    CPU, which ComfyUI does not let compute in them, it manual-casts them to float32 layer by layer."""
    import comfy.cli_args
    from onestep_sr.models.pipeline import upscale

    monkeypatch.setattr(comfy.cli_args.args, flag, True)
    net, path = _random_default_model(tmp_path)
    model, vae = ext["default_model"].load_default_model(path)
    layers = [m for m in model.model.diffusion_model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert {m.weight.dtype for m in layers} == {weight_dtype}
    assert model.model.manual_cast_dtype == torch.float32
    if route != "as loaded":
        model = model.clone()
        model.set_model_unet_function_wrapper(CallLog())
    inputs = InputDtypes(model.model.diffusion_model.net.conv_in)
    image = lr_image(5)
    out = _one_click(ext, model, vae, image)
    reference = upscale(net, image.permute(0, 3, 1, 2), 4, steps=2).permute(0, 2, 3, 1)
    assert inputs.seen == {torch.float32} and out.dtype == torch.float32
    assert 0 < (out - reference).abs().max() < bound  # the rounded weights, computed in float32


def test_default_model_runs_offloaded_layer_by_layer_under_lowvram(ext, monkeypatch):
    """ComfyUI's --novram (the extreme of --lowvram) keeps every weight on the offload device and casts it in
    per layer, weight patches (a LoRA: the realism adapter) applied on the fly: the same upscale as a full
    load. This host has no GPU, so the test makes ComfyUI take the CPU for one."""
    import comfy.model_management

    shipped = ext["default_model"].REALISM_ADAPTER.replace("loras/onestep_sr_realism", "onestep_sr_default")
    model, vae = ext["default_model"].load_default_model(shipped)
    model = ext["default_model"].with_realism(model, 0.5)
    image = lr_image(6, 24, 24)
    full = _one_click(ext, model, vae, image, steps=1)
    comfy.model_management.unload_all_models()
    monkeypatch.setattr(comfy.model_management, "vram_state", comfy.model_management.VRAMState.NO_VRAM)
    monkeypatch.setattr(comfy.model_management, "is_device_cpu", lambda device: False)
    try:
        offloaded = _one_click(ext, model, vae, image, steps=1)
        layers = [m for m in model.model.diffusion_model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        assert model.model.model_lowvram and all(m.comfy_cast_weights for m in layers)
    finally:
        monkeypatch.undo()
        comfy.model_management.unload_all_models()
    assert (offloaded - full).abs().max() <= 1e-6


def test_automatic_tiles_come_from_comfyuis_memory_management(ext, tmp_path, monkeypatch):
    """The tile side is sqrt(half the free memory ComfyUI reports / the model's own estimate per latent
    cell), in multiples of 8: 1000 bytes a cell and 2 * 1000 * 200^2 bytes free give tiles of 200 cells."""
    import comfy.model_management

    _, path = _random_default_model(tmp_path)
    model, _ = ext["default_model"].load_default_model(path)
    monkeypatch.setattr(model.model, "memory_required", lambda shape: 1000 * shape[-1] * shape[-2])
    monkeypatch.setattr(comfy.model_management, "get_free_memory", lambda *_, **__: 2 * 1000 * 200 ** 2)
    assert ext["upscale"].auto_latent_tile(model, torch.zeros(1, 3, 512, 512)) == 200
    monkeypatch.setattr(comfy.model_management, "get_free_memory", lambda *_, **__: 2 * 1000 * 205 ** 2)
    assert ext["upscale"].auto_latent_tile(model, torch.zeros(1, 3, 512, 512)) == 200  # rounded down to 8


def test_fp8_weights_asked_for_on_mps_load_in_fp16(ext, tmp_path, monkeypatch, caplog):
    """ComfyUI's --fp8_e4m3fn-unet gives native models float8 weights even on Apple's MPS, which holds no float8
    tensors; the default model loads in float16 there instead, and says so. (Nothing runs on the MPS here: the
    model is built on the offload device and only placed on load.)"""
    import comfy.cli_args
    import comfy.model_management

    monkeypatch.setattr(comfy.cli_args.args, "fp8_e4m3fn_unet", True)
    _, path = _random_default_model(tmp_path)
    on_cpu, _ = ext["default_model"].load_default_model(path)
    assert on_cpu.model.get_dtype() == torch.float8_e4m3fn  # elsewhere ComfyUI's choice stands
    monkeypatch.setattr(comfy.model_management, "get_torch_device", lambda: torch.device("mps"))
    monkeypatch.setattr(comfy.model_management, "mac_version", lambda: (14, 0))  # ComfyUI asks, for bf16
    on_mps, _ = ext["default_model"].load_default_model(path)
    assert on_mps.model.get_dtype() == torch.float16 and on_mps.load_device.type == "mps"
    assert "not supported on Apple's MPS; the default model loads in float16 instead" in caplog.text
