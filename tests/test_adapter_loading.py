"""'Load SR Adapter' (bridge/adapter_loading.py) on tiny native ComfyUI models, in a real ComfyUI in-process.

Every supported format is written with known random weights, loaded through the node's function,
run through ComfyUI's own weight patching (load_models_gpu), and compared with the same LoRA applied
directly with peft to a copy of the model (max abs difference <= 1e-5, float32). Module
correspondences between a file's names and ComfyUI's (diffusers -> ldm, FLUX's fused qkv) are
written out by hand here: they are the known answers. The dual-branch layout has no peft
equivalent; its reference is ODTSR's published layer, re-stated below.
"""

import copy
import json

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from safetensors.torch import save_file

from onestep_sr.testing import tiny_models

pytestmark = pytest.mark.host
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def node(comfy_host):
    """bridge/adapter_loading.py as a module of the extension package ComfyUI loaded."""
    return comfy_host.module("bridge.adapter_loading")


def randn(*shape, seed, std=0.3):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std


def lora_for(weight: torch.Tensor, rank: int, seed: int):
    """(down, up) for a Linear [out, in] or Conv2d [out, in, k, k] weight."""
    down = randn(rank, *weight.shape[1:], seed=seed)
    up = randn(weight.shape[0], rank, *([1] * (weight.ndim - 2)), seed=seed + 1)
    return down, up


def with_peft(module, loras: dict, rank: int, alpha: float):
    """A copy of `module` with peft LoRA layers at the given paths holding (down, up)."""
    ref = copy.deepcopy(module)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(loras)), ref)
    with torch.no_grad():
        for path, (down, up) in loras.items():
            layer = ref.get_submodule(path)
            layer.lora_A["default"].weight.copy_(down.reshape(layer.lora_A["default"].weight.shape))
            layer.lora_B["default"].weight.copy_(up.reshape(layer.lora_B["default"].weight.shape))
    return ref.eval()


def model_inputs(family):
    dims = tiny_models.FAMILIES[family]
    channels = dims["latent_channels"]
    context = randn(1, tiny_models.CONTEXT_TOKENS, dims["context_dim"], seed=11, std=1.0)
    pooled = None if dims["pooled_dim"] is None else randn(1, dims["pooled_dim"], seed=12, std=1.0)
    x = randn(1, channels, 8, 8, seed=10, std=1.0)
    if family == "flux":
        return (x, torch.tensor([0.6]), context), {"y": pooled, "guidance": torch.tensor([3.5])}
    return (x, torch.tensor([600.0]), context), ({} if pooled is None else {"y": pooled})


def patched_output(model_patcher, args, kwargs):
    return patched_run(model_patcher, lambda model: model.diffusion_model(*args, **kwargs))


def patched_run(patcher, run):
    """run(patcher.model) with the patcher's weight patches applied (then removed again)."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher])
    try:
        with torch.no_grad():
            return run(patcher.model)
    finally:
        patcher.unpatch_model()


def check_close(patched, reference, base):
    assert (patched - reference).abs().max() <= TOLERANCE
    assert (reference - base).abs().max() > 1e-3  # the adapter changes the output: the test can fail


def check_model_and_vae_match_peft(model, vae, patched, patched_vae, family, loras, vae_loras, ranks, alphas,
                                   pixel_seed):
    """The patched MODEL and the patched VAE's encoder against peft LoRAs applied directly (`ranks`,
    `alphas`: (model's, VAE's)); the input VAE stays untouched."""
    args, kwargs = model_inputs(family)
    reference = with_peft(model.model.diffusion_model, loras, ranks[0], alphas[0])
    vae_reference = with_peft(vae.first_stage_model, vae_loras, ranks[1], alphas[1])
    pixels = randn(1, 3, 32, 32, seed=pixel_seed, std=0.5)
    with torch.no_grad():
        expected, base = reference(*args, **kwargs), model.model.diffusion_model(*args, **kwargs)
        expected_latent, base_latent = vae_reference.encoder(pixels), vae.first_stage_model.encoder(pixels)
    check_close(patched_output(patched, args, kwargs), expected, base)
    check_close(patched_run(patched_vae.patcher, lambda vae_model: vae_model.encoder(pixels)), expected_latent,
                base_latent)
    with torch.no_grad():
        assert torch.equal(vae.first_stage_model.encoder(pixels), base_latent)


def weights_of(model_patcher):
    return model_patcher.model.diffusion_model.state_dict()


# ---------------------------------------------------------------- ComfyUI / kohya keys

KOHYA_MODULES = {
    "flux": ["double_blocks.0.img_attn.qkv", "single_blocks.0.linear1", "double_blocks.0.txt_mlp.2"],
    "sd3": ["joint_blocks.0.x_block.attn.qkv", "joint_blocks.0.x_block.mlp.fc1", "context_embedder"],
    "sd2": ["input_blocks.1.1.transformer_blocks.0.attn1.to_q", "input_blocks.1.0.in_layers.2", "out.2"],
}


@pytest.mark.parametrize("family,key_style", [("flux", "kohya"), ("sd3", "comfy"), ("sd2", "kohya")])
def test_comfy_and_kohya_loras_match_peft(node, tmp_path, family, key_style):
    model = tiny_models.build_model(family)
    weights = weights_of(model)
    rank, alpha, strength = 4, 2.0, 0.7
    loras = {path: lora_for(weights[f"{path}.weight"], rank, seed=i) for i, path in enumerate(KOHYA_MODULES[family])}
    tensors = {}
    for path, (down, up) in loras.items():
        name = f"lora_unet_{path.replace('.', '_')}" if key_style == "kohya" else f"diffusion_model.{path}"
        tensors.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                        f"{name}.alpha": torch.tensor(alpha)})
    save_file(tensors, tmp_path / "a.safetensors")
    args, kwargs = model_inputs(family)
    reference = with_peft(model.model.diffusion_model, loras, rank, alpha * strength)
    with torch.no_grad():
        expected, base = reference(*args, **kwargs), model.model.diffusion_model(*args, **kwargs)
    patched, vae, report = node.load_sr_adapter(model, str(tmp_path / "a.safetensors"), strength)
    assert "comfy_kohya" in report and f"MODEL: {len(loras)} modules" in report and vae is None
    check_close(patched_output(patched, args, kwargs), expected, base)


# ---------------------------------------------------------------- diffusers / PEFT keys


def test_diffusers_flux_lora_lands_in_comfys_fused_layers(node, tmp_path):
    model = tiny_models.build_model("flux")
    weights = weights_of(model)
    hidden, rank = weights["double_blocks.0.img_attn.qkv.weight"].shape[1], 4
    q_down, q_up = randn(rank, hidden, seed=1), randn(hidden, rank, seed=2)
    out_down, out_up = lora_for(weights["single_blocks.0.linear2.weight"], rank, seed=3)
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": q_down,
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": q_up,
               "transformer.single_transformer_blocks.0.proj_out.lora_A.weight": out_down,
               "transformer.single_transformer_blocks.0.proj_out.lora_B.weight": out_up}, tmp_path / "f.safetensors")
    # diffusers' to_q is the first third of ComfyUI's fused qkv; proj_out is linear2 (known answers)
    fused_up = torch.cat([q_up, torch.zeros(2 * hidden, rank)])
    reference = with_peft(model.model.diffusion_model, {"double_blocks.0.img_attn.qkv": (q_down, fused_up),
                                                        "single_blocks.0.linear2": (out_down, out_up)}, rank, rank)
    args, kwargs = model_inputs("flux")
    with torch.no_grad():
        expected, base = reference(*args, **kwargs), model.model.diffusion_model(*args, **kwargs)
    patched, _, report = node.load_sr_adapter(model, str(tmp_path / "f.safetensors"))
    assert "peft_diffusers" in report
    check_close(patched_output(patched, args, kwargs), expected, base)


# diffusers UNet2DConditionModel module -> ComfyUI module of the tiny SD2 UNet (one level, no middle block)
SD2_DIFFUSERS = {
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.resnets.0.conv1": "input_blocks.1.0.in_layers.2",
    "up_blocks.0.attentions.1.proj_out": "output_blocks.1.1.proj_out",
    "up_blocks.0.resnets.0.conv_shortcut": "output_blocks.0.0.skip_connection",
}


def test_peft_unet_lora_with_adapter_config_matches_peft(node, tmp_path):
    model = tiny_models.build_model("sd2")
    weights = weights_of(model)
    rank, alpha = 4, 8.0  # scaling 2, read from the adapter_config.json beside the file
    loras = {comfy: lora_for(weights[f"{comfy}.weight"], rank, seed=i) for i, comfy in enumerate(SD2_DIFFUSERS.values())}
    tensors = {}
    for diffusers, comfy in SD2_DIFFUSERS.items():
        down, up = loras[comfy]
        tensors[f"base_model.model.{diffusers}.lora_A.default.weight"] = down
        tensors[f"base_model.model.{diffusers}.lora_B.default.weight"] = up
    folder = tmp_path / "peft_adapter"
    folder.mkdir()
    save_file(tensors, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": alpha, "peft_type": "LORA"}))
    args, kwargs = model_inputs("sd2")
    reference = with_peft(model.model.diffusion_model, loras, rank, alpha)
    with torch.no_grad():
        expected, base = reference(*args, **kwargs), model.model.diffusion_model(*args, **kwargs)
    patched, _, _ = node.load_sr_adapter(model, str(folder / "adapter_model.safetensors"))
    check_close(patched_output(patched, args, kwargs), expected, base)


# ---------------------------------------------------------------- TSD-SR (SD3 transformer + VAE-encoder LoRA files)

# TSD-SR's released files (test/test_tsdsr.py of its repository): StableDiffusion3Pipeline.lora_state_dict
# reads both, and its load_lora_state_dict copies peft parameter "<module>.lora_A.default.weight" from
# key "transformer.<module>.lora_A.weight" -- the VAE file's keys carry "transformer." too. LoraConfig
# r = lora_alpha = 64 for both (scaling 1); targets to_q/k/v, to_out.0, add_*_proj, proj, linear, proj_out.
# diffusers SD3 module -> (ComfyUI module of the tiny SD3, how the file's up matrix lands in ComfyUI's weight)
TSDSR_TRANSFORMER = {
    "transformer_blocks.0.attn.to_q": ("joint_blocks.0.x_block.attn.qkv", "qkv_first_third"),
    "transformer_blocks.0.attn.add_k_proj": ("joint_blocks.0.context_block.attn.qkv", "qkv_second_third"),
    "transformer_blocks.0.norm1.linear": ("joint_blocks.0.x_block.adaLN_modulation.1", "same"),
    "transformer_blocks.0.norm1_context.linear": ("joint_blocks.0.context_block.adaLN_modulation.1", "swap_halves"),
    "transformer_blocks.0.ff.net.0.proj": ("joint_blocks.0.x_block.mlp.fc1", "same"),
    "pos_embed.proj": ("x_embedder.proj", "same"),
    "norm_out.linear": ("final_layer.adaLN_modulation.1", "swap_halves"),
    "proj_out": ("final_layer.linear", "same"),
}


def up_in_comfy(up: torch.Tensor, how: str, rows: int) -> torch.Tensor:
    """A diffusers LoRA up matrix as ComfyUI's weight sees it (known answers: fused qkv thirds; the
    last adaLN layers hold (shift, scale) where diffusers holds (scale, shift))."""
    if how.startswith("qkv"):
        third = ("first", "second", "third").index(how.split("_")[1])
        full = torch.zeros(rows, up.shape[1])
        full[third * up.shape[0]:(third + 1) * up.shape[0]] = up
        return full
    if how == "swap_halves":
        return torch.cat(up.chunk(2)[::-1])
    return up


def test_tsdsr_transformer_and_vae_files_match_peft(node, tmp_path):
    model, vae = tiny_models.build_model("sd3"), tiny_sd_vae()
    weights, vae_weights, rank = weights_of(model), vae.first_stage_model.state_dict(), 4
    hidden = weights["joint_blocks.0.x_block.attn.qkv.weight"].shape[1]
    transformer, loras = {}, {}
    for i, (diffusers, (module, how)) in enumerate(TSDSR_TRANSFORMER.items()):
        weight = weights[f"{module}.weight"]
        rows = hidden if how.startswith("qkv") else weight.shape[0]
        down, up = lora_for(torch.zeros(rows, *weight.shape[1:]), rank, seed=100 + 2 * i)
        up = up * 0.3  # eight adapted layers, adaLN among them: smaller updates keep float32 rounding in tolerance
        transformer[f"transformer.{diffusers}.lora_A.weight"] = down
        transformer[f"transformer.{diffusers}.lora_B.weight"] = up
        loras[module] = (down, up_in_comfy(up.flatten(1), how, weight.shape[0]).reshape(weight.shape[0], rank,
                                                                                        *up.shape[2:]))
    vae_file, vae_loras = {}, {}
    for i, (diffusers, ldm) in enumerate(VAE_DIFFUSERS.items()):
        weight = vae_weights[f"{ldm}.weight"]
        down, up = lora_for(weight.flatten(1) if diffusers.endswith("to_q") else weight, rank, seed=140 + i)
        vae_file[f"transformer.{diffusers}.lora_A.weight"], vae_file[f"transformer.{diffusers}.lora_B.weight"] = down, up
        vae_loras[ldm] = (down, up)
    save_file(transformer, tmp_path / "transformer.safetensors")
    save_file(vae_file, tmp_path / "vae.safetensors")

    patched, patched_vae, report = node.load_sr_adapter(model, str(tmp_path / "transformer.safetensors"), vae=vae,
                                                        vae_path=str(tmp_path / "vae.safetensors"))
    assert "peft_diffusers" in report and f"MODEL: {len(TSDSR_TRANSFORMER)} modules" in report
    assert f"VAE: {len(VAE_DIFFUSERS)} modules" in report
    # alpha = rank: scaling 1
    check_model_and_vae_match_peft(model, vae, patched, patched_vae, "sd3", loras, vae_loras, (rank, rank),
                                   (rank, rank), pixel_seed=51)


# ---------------------------------------------------------------- FlowSR single file (UNet + VAE encoder)

TINY_VAE = {"double_z": True, "z_channels": 4, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
            "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
# diffusers AutoencoderKL module -> ComfyUI (ldm) module
VAE_DIFFUSERS = {"encoder.conv_in": "encoder.conv_in",
                 "encoder.down_blocks.0.resnets.0.conv1": "encoder.down.0.block.0.conv1",
                 "encoder.down_blocks.1.resnets.0.conv_shortcut": "encoder.down.1.block.0.nin_shortcut",
                 "encoder.mid_block.attentions.0.to_q": "encoder.mid.attn_1.q"}


def tiny_sd_vae():
    """A comfy.sd.VAE holding a small SD-layout AutoencoderKL (ComfyUI's loader only builds full-size ones)."""
    import comfy.model_management
    import comfy.model_patcher
    from comfy.ldm.models.autoencoder import AutoencoderKL

    vae = tiny_models.build_vae(4)
    first_stage = AutoencoderKL(ddconfig=TINY_VAE, embed_dim=4)
    first_stage.load_state_dict(tiny_models._random_state_dict(first_stage, "test_adapter_tiny_sd_vae"))
    vae.first_stage_model = first_stage.eval()
    vae.patcher = comfy.model_patcher.ModelPatcher(first_stage, load_device=vae.device,
                                                   offload_device=comfy.model_management.vae_offload_device())
    return vae


def flowsr_file(path, unet: dict, vae: dict, fields: dict):
    """FlowSR's layout: tensors under opaque keys, their original names in the metadata JSON."""
    tensors, names = {}, {"unet_state_dict": {}, "vae_state_dict": {}}
    for group, state in (("unet_state_dict", unet), ("vae_state_dict", vae)):
        for i, (key, value) in enumerate(state.items()):
            tensors[f"{group}.{i}"] = value
            names[group][f"{group}.{i}"] = key
    save_file(tensors, path, metadata={"flowsr_checkpoint_metadata": json.dumps({"fields": fields, "tensor_names": names})})


def test_flowsr_file_patches_unet_and_vae_encoder(node, tmp_path):
    model, vae = tiny_models.build_model("sd2"), tiny_sd_vae()
    unet_rank, vae_rank = 4, 2  # FlowSR leaves peft's default alpha 8: scalings 2 and 4
    weights, vae_weights = weights_of(model), vae.first_stage_model.state_dict()
    unet_loras = {c: lora_for(weights[f"{c}.weight"], unet_rank, seed=20 + i) for i, c in enumerate(SD2_DIFFUSERS.values())}
    vae_loras = {}
    for i, (diffusers, ldm) in enumerate(VAE_DIFFUSERS.items()):
        weight = vae_weights[f"{ldm}.weight"]
        if diffusers.endswith("to_q"):  # a diffusers Linear where ComfyUI has a 1x1 convolution
            weight = weight.flatten(1)
        vae_loras[ldm] = lora_for(weight, vae_rank, seed=40 + i)
    unet = {f"{d}.lora_{p}.default.weight": unet_loras[c][k] for d, c in SD2_DIFFUSERS.items() for k, p in ((0, "A"), (1, "B"))}
    vae_sd = {f"{d}.lora_{p}.vae_skip.weight": vae_loras[c][k] for d, c in VAE_DIFFUSERS.items() for k, p in ((0, "A"), (1, "B"))}
    fields = {"unet_rank": unet_rank, "unet_lora_target_modules": ["to_q", "conv1", "proj_out", "conv_shortcut"],
              "vae_rank": vae_rank, "vae_lora_target_modules": ["conv_in", "conv1", "conv_shortcut", "to_q"]}
    flowsr_file(tmp_path / "flowsr.safetensors", unet, vae_sd, fields)

    patched, patched_vae, report = node.load_sr_adapter(model, str(tmp_path / "flowsr.safetensors"), vae=vae)
    assert "flowsr" in report and "VAE: 4 modules" in report
    check_model_and_vae_match_peft(model, vae, patched, patched_vae, "sd2", unet_loras, vae_loras,
                                   (unet_rank, vae_rank), (8.0, 8.0), pixel_seed=50)

    with pytest.raises(ValueError, match="connect the model's VAE"):  # the VAE part is never dropped silently
        node.load_sr_adapter(model, str(tmp_path / "flowsr.safetensors"))


# ---------------------------------------------------------------- dual-branch (Qwen-Image)

QWEN = {"image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 1,
        "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32, "axes_dims_rope": (4, 6, 6)}
DUAL_MODULES = ("img_in", "transformer_blocks.0.attn.to_q", "transformer_blocks.0.img_mlp.net.2",
                "transformer_blocks.0.img_mod.1")


def tiny_qwen_image():
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.QwenImage(dict(QWEN))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    model.load_model_weights(tiny_models._random_state_dict(model.diffusion_model, "test_adapter_tiny_qwen_image"), "")
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


class ODTSRDualLoRALinear(torch.nn.Module):
    """ODTSR's published DualLoRALinear: LoRA 1 on the first half of the tokens, LoRA 2 on the second
    half; a 2-D input gives both outputs stacked on dim 1."""

    def __init__(self, linear, parts, scale1, scale2):
        super().__init__()
        self.linear, self.parts, self.scales = linear, parts, (scale1, scale2)

    def delta(self, x, i):
        return x @ self.parts[f"lora_A{i}"].T @ self.parts[f"lora_B{i}"].T * self.scales[i - 1]

    def forward(self, x):
        y = self.linear(x)
        if x.ndim == 2:
            return torch.stack([y + self.delta(x, 1), y + self.delta(x, 2)], dim=1)
        half = x.shape[1] // 2
        y = y.clone()
        y[:, :half] += self.delta(x[:, :half], 1)
        y[:, half:] += self.delta(x[:, half:], 2)
        return y


def odtsr_modulate(x, mod_params):
    """ODTSR's block modulation for [B, 2, 3 * dim] parameters (one row per token half)."""
    if mod_params.ndim == 2:
        shift, scale, gate = mod_params.chunk(3, dim=-1)
        return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1)), gate.unsqueeze(1)
    half = x.shape[1] // 2
    shift, scale, gate = mod_params.chunk(3, dim=-1)
    out, gates = torch.empty_like(x), torch.empty(x.shape[0], x.shape[1], gate.shape[-1])
    out[:, :half] = x[:, :half] * (1 + scale[:, 0:1]) + shift[:, 0:1]
    out[:, half:] = x[:, half:] * (1 + scale[:, 1:2]) + shift[:, 1:2]
    gates[:, :half], gates[:, half:] = gate[:, 0:1].expand(-1, half, -1), gate[:, 1:2].expand(-1, x.shape[1] - half, -1)
    return out, gates


@pytest.mark.parametrize("noise_scale,condition_scale", [(0.0, 1.0), (0.5, 1.5)])
def test_dual_branch_lora_matches_odtsrs_layer(node, tmp_path, noise_scale, condition_scale):
    model = tiny_qwen_image()
    weights, rank, strength = weights_of(model), 4, 0.8
    parts = {}
    for i, path in enumerate(DUAL_MODULES):
        weight = weights[f"{path}.weight"]
        parts[path] = {"lora_A1": randn(rank, weight.shape[1], seed=60 + i), "lora_B1": randn(weight.shape[0], rank, seed=70 + i),
                       "lora_A2": randn(rank, weight.shape[1], seed=80 + i), "lora_B2": randn(weight.shape[0], rank, seed=90 + i)}
    save_file({f"pipe.dit.{path}.{name}.weight": t for path, ps in parts.items() for name, t in ps.items()},
              tmp_path / "dual.safetensors")

    reference = copy.deepcopy(model.model.diffusion_model)
    for path, ps in parts.items():
        parent, _, child = path.rpartition(".")
        holder = reference.get_submodule(parent) if parent else reference
        setattr(holder, child, ODTSRDualLoRALinear(getattr(holder, child), ps, strength * noise_scale,
                                                   strength * condition_scale))
    reference.transformer_blocks[0]._modulate = odtsr_modulate
    x, ref = randn(1, 16, 1, 8, 8, seed=1, std=1.0), randn(1, 16, 1, 8, 8, seed=2, std=1.0)
    args, kwargs = (x, torch.tensor([0.7]), randn(1, 6, 32, seed=3, std=1.0)), {"ref_latents": [ref]}
    with torch.no_grad():
        expected, base = reference(*args, **kwargs), model.model.diffusion_model(*args, **kwargs)

    patched, _, report = node.load_sr_adapter(model, str(tmp_path / "dual.safetensors"), strength,
                                              noise_scale=noise_scale, condition_scale=condition_scale)
    assert "dual_branch" in report and f"MODEL (dual-branch): {len(DUAL_MODULES)} modules" in report
    check_close(patched_output(patched, args, kwargs), expected, base)
    with torch.no_grad():  # unpatched again: the base model is back
        torch.testing.assert_close(model.model.diffusion_model(*args, **kwargs), base)
    options = patched.model_options["transformer_options"]  # what ComfyUI's sampler hands the model
    with pytest.raises(ValueError, match="exactly one reference latent"):
        patched_output(patched, args, {"transformer_options": options})
    check_close(patched_output(patched, args, {**kwargs, "transformer_options": options}), expected, base)


# ODTSR's `pipe.new_vae` is DiffSynth's QwenImageVAE, whose encoder modules carry diffusers-style names;
# ComfyUI's Qwen-Image VAE is WanVAE. DiffSynth module -> WanVAE module (known answers, written out by hand).
ODTSR_VAE = {"encoder.conv_in": "encoder.conv1",
             "encoder.down_blocks.0.conv1": "encoder.downsamples.0.residual.2",
             "encoder.down_blocks.3.conv_shortcut": "encoder.downsamples.3.shortcut",
             "encoder.down_blocks.4.conv2": "encoder.downsamples.4.residual.6",
             "encoder.mid_block.resnets.1.conv1": "encoder.middle.2.residual.2",
             "encoder.conv_out": "encoder.head.2",
             "quant_conv": "conv1"}


def tiny_wan_vae():
    """A comfy.sd.VAE holding a small Wan-2.1 VAE, the architecture of ComfyUI's Qwen-Image VAE."""
    import comfy.sd
    from comfy.ldm.wan.vae import WanVAE

    module = WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                    temperal_downsample=[False, True, True])
    return comfy.sd.VAE(sd=tiny_models._random_state_dict(module, "test_adapter_tiny_wan_vae"))


def test_odtsr_new_vae_encoder_weights_land_in_comfys_wan_vae(node, tmp_path):
    model, vae = tiny_qwen_image(), tiny_wan_vae()
    weights, vae_weights, rank = weights_of(model), vae.first_stage_model.state_dict(), 4
    weight = weights["transformer_blocks.0.attn.to_q.weight"]
    tensors = {f"pipe.dit.transformer_blocks.0.attn.to_q.{part}.weight": randn(*shape, seed=200 + i)
               for i, (part, shape) in enumerate((("lora_A1", (rank, weight.shape[1])), ("lora_B1", (weight.shape[0], rank)),
                                                  ("lora_A2", (rank, weight.shape[1])), ("lora_B2", (weight.shape[0], rank))))}
    replaced = {}
    for i, (diffsynth, wan) in enumerate(ODTSR_VAE.items()):
        for j, kind in enumerate(("weight", "bias")):
            value = randn(*vae_weights[f"{wan}.{kind}"].shape, seed=300 + 2 * i + j, std=0.1)
            tensors[f"pipe.new_vae.{diffsynth}.{kind}"] = value
            replaced[f"{wan}.{kind}"] = value
    save_file(tensors, tmp_path / "odtsr.safetensors")

    reference = copy.deepcopy(vae.first_stage_model)
    reference.load_state_dict({**reference.state_dict(), **replaced})
    pixels = randn(1, 3, 1, 32, 32, seed=52, std=0.5)
    with torch.no_grad():
        expected, base = reference.encode(pixels), vae.first_stage_model.encode(pixels)

    _, patched_vae, report = node.load_sr_adapter(model, str(tmp_path / "odtsr.safetensors"), vae=vae)
    assert "dual_branch" in report and f"VAE: {len(replaced)} modules" in report
    check_close(patched_run(patched_vae.patcher, lambda vae_model: vae_model.encode(pixels)), expected, base)


# ---------------------------------------------------------------- problems are named, never skipped


def test_unknown_keys_and_wrong_shapes_are_named(node, tmp_path):
    model = tiny_models.build_model("sd3")
    weights = weights_of(model)
    good = lora_for(weights["joint_blocks.0.x_block.mlp.fc1.weight"], 4, seed=1)
    bad = lora_for(weights["joint_blocks.0.x_block.mlp.fc2.weight"], 4, seed=2)
    save_file({"diffusion_model.joint_blocks.0.x_block.mlp.fc1.lora_down.weight": good[0],
               "diffusion_model.joint_blocks.0.x_block.mlp.fc1.lora_up.weight": good[1],
               "diffusion_model.joint_blocks.0.x_block.mlp.fc2.lora_down.weight": bad[0][:, :-1].contiguous(),
               "diffusion_model.joint_blocks.0.x_block.mlp.fc2.lora_up.weight": bad[1],
               "diffusion_model.no_such_block.lora_down.weight": good[0].clone()}, tmp_path / "p.safetensors")
    with pytest.raises(ValueError) as error:
        node.load_sr_adapter(model, str(tmp_path / "p.safetensors"))
    message = str(error.value)
    assert "unknown key diffusion_model.no_such_block.lora_down.weight" in message
    assert "shape mismatch at diffusion_model.joint_blocks.0.x_block.mlp.fc2.weight" in message
    patched, _, report = node.load_sr_adapter(model, str(tmp_path / "p.safetensors"), on_problem="report")
    assert "MODEL: 1 modules" in report and "2 problem(s)" in report
    assert set(patched.patches) == {"diffusion_model.joint_blocks.0.x_block.mlp.fc1.weight"}


def test_only_safetensors_are_read(node, tmp_path):
    path = tmp_path / "adapter.pt"
    path.write_bytes(b"not even a pickle")
    with pytest.raises(ValueError, match="safetensors"):
        node.load_sr_adapter(tiny_models.build_model("sd2"), str(path))
    renamed = tmp_path / "pickle_in_disguise.safetensors"
    renamed.write_bytes(b"\x80\x04not a safetensors header")
    with pytest.raises(ValueError, match="is not a safetensors file"):
        node.load_sr_adapter(tiny_models.build_model("sd2"), str(renamed))


def test_node_lists_and_loads_adapters_from_the_loras_folder(node, comfy_host):
    model = tiny_models.build_model("sd2")
    weights = weights_of(model)
    down, up = lora_for(weights["input_blocks.1.1.proj_in.weight"], 2, seed=3)
    name, folder = "sr_adapter_test.safetensors", comfy_host.base / "models" / "loras"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"diffusion_model.input_blocks.1.1.proj_in.lora_down.weight": down,
               "diffusion_model.input_blocks.1.1.proj_in.lora_up.weight": up}, folder / name)
    comfy_host.folder_paths.filename_list_cache.clear()
    assert name in comfy_host.extension_nodes["OneStepSR_LoadAdapter"].INPUT_TYPES()["required"]["adapter_name"][0]
    patched, vae, report = comfy_host.extension_nodes["OneStepSR_LoadAdapter"]().load(model, name, 1.0, "auto", "error")
    assert set(patched.patches) == {"diffusion_model.input_blocks.1.1.proj_in.weight"} and name in report


def test_projects_peft_folder_loads_on_the_default_model(node, comfy_host, tmp_path):
    """The PEFT export of adapters/lora.py (keys base_model.model.unet..., alpha in adapter_config.json)."""
    from onestep_sr.models.flow_map_sr import FlowMapSRNet, save_model
    from onestep_sr.samplers.sampling import TARGET_KEY
    from onestep_sr.adapters.lora import add_lora, lora_layers, LoraSpec, save_lora

    default_model = comfy_host.module("bridge.default_model")
    torch.manual_seed(0)
    net = FlowMapSRNet(width=16, blocks=2).eval()
    torch.nn.init.normal_(net.conv_out.weight, std=0.05)
    save_model(net, str(tmp_path / "base.safetensors"))
    spec = LoraSpec(rank=2, alpha=5.0, target_modules=("conv1", "time_emb_proj"))
    add_lora(net, spec)
    with torch.no_grad():
        for layer in lora_layers(net).values():
            torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.2)
    folder = save_lora(tmp_path / "adapter", net, spec, file_format="peft")
    model, _ = default_model.load_default_model(str(tmp_path / "base.safetensors"))
    patched, _, report = node.load_sr_adapter(model, str(folder / "adapter_model.safetensors"))
    assert f"MODEL: {len(lora_layers(net))} modules" in report
    x, cond = randn(1, 3, 32, 32, seed=1, std=1.0), randn(1, 3, 32, 32, seed=2, std=1.0)
    t, options = torch.tensor([0.8]), {"transformer_options": {TARGET_KEY: {"sigma_to": 0.0, "family": "shortcut"}}}
    with torch.no_grad():
        expected = net(x, t, torch.zeros(1), cond)
        base = model.model.diffusion_model(x, t, **options)
    check_close(patched_output(patched, (x, t), options), expected, base)
