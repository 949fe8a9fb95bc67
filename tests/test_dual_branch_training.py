"""Train SR LoRA on tiny FLUX, SD3, Qwen-Image and Lumina 2 / Z-Image models through the dual-branch patch (bridge/dual_branch.py): TEASR's any-step
objective (trajectory endpoint + self-adversarial distillation with timestep-aware rectification), with a
dual-branch LoRA on every family (bridge/dual_branch_lora.py), makes 1, 2 and 4 dual-branch steps agree,
and the one-step output nearer the HR latent, than at the start.

The measures are taken against the data (the HR latent of the training pair) and between the sampler's
own outputs, never against values the code under test computes as expected answers. Margins (measured on
2 CPU cores, see /work/notes/issue17-dual.md): the 1/2/4-step spread falls below 0.45 of its start and the
one-step error below 0.8 of its start.
"""

import time

import pytest
import torch

from onestep_sr.testing import tiny_models

pytestmark = pytest.mark.host
CROP, SCALE, STEPS = 64, 4, 100


def hr_images():
    """Two smooth colour images (low-frequency sinusoids: a toy an SR LoRA can fit in 100 steps)."""
    y, x = torch.meshgrid(torch.linspace(0, 1, CROP), torch.linspace(0, 1, CROP), indexing="ij")
    out = []
    for k in (1.0, 2.0):
        channels = [0.5 + 0.4 * torch.sin(2 * torch.pi * (k * x + c / 3) + k * y) for c in range(3)]
        out.append(torch.stack(channels, dim=-1))
    return torch.stack(out)  # [2, H, W, 3] in [0, 1]


def sample(model, positive, lr_raw, steps, bridge):
    """Dual-branch sampling from the LR latent at t = 1 (start mode 'lr'), through ComfyUI's CFGGuider at
    w = 1 with the extension's SAMPLER and sigmas."""
    import comfy.samplers

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, positive)
    guider.set_cfg(1.0)
    sampler = bridge.flow_map_sampler("lr", family="dual_branch")
    sigmas = bridge.flow_map_sigmas(model, steps, 1.0, 1.0)
    return guider.sample(torch.zeros_like(lr_raw), lr_raw, sampler, sigmas, disable_pbar=True, seed=0)


def measure(model, positive, pair, bridge):
    lr_raw, hr_raw = pair
    outs = {steps: sample(model, positive, lr_raw, steps, bridge) for steps in (1, 2, 4)}
    spread = max(float((outs[k] - outs[1]).abs().max()) for k in (2, 4))
    error = float((outs[1] - hr_raw).abs().mean())
    return spread, error


@pytest.mark.parametrize("family", ["flux", "sd3", "qwen_image", "lumina2"])
def test_training_makes_1_2_4_steps_agree_and_nearer_the_data(comfy_host, family):
    from onestep_sr.training.sr_data import ImageCrops, sr_batches

    dual = comfy_host.module("bridge.dual_branch")
    bridge = comfy_host.module("bridge.sampling")
    runs = comfy_host.module("bridge.training_runs")
    vae = tiny_models.build_wan_vae() if family == "qwen_image" else tiny_models.build_vae(16)
    model = dual.dual_branch_patch(tiny_models.build_model(family))
    positive = tiny_models.conditioning(family, seed=1)
    images = hr_images()

    # the first training image and its clean x4 LR, enlarged back, as the training batches make them
    batch = sr_batches(ImageCrops([images[0].permute(2, 0, 1)]), 1, CROP, 0.0, scales=(SCALE,))(
        torch.Generator().manual_seed(0))
    with torch.no_grad():
        pair = tuple(vae.encode(((batch[k] + 1) / 2).clamp(0, 1).movedim(1, -1)) for k in ("cond", "x0"))
    start = measure(model, positive, pair, bridge)

    began = time.perf_counter()
    tuned, _, report = runs.train_sr_lora(
        model, vae, f"dual_branch_toy_{family}", steps=STEPS, batch_size=2, crop_size=CROP, scale=SCALE, rank=8,
        learning_rate=2e-3, adversarial_weight=0.0, discriminator="patch", seed=0, overwrite=True,
        images=images, real_degradation=0.0, positive=positive)
    seconds = time.perf_counter() - began
    end = measure(tuned, positive, pair, bridge)
    print(f"dual-branch toy training, {family}: {STEPS} steps in {seconds:.1f} s; 1/2/4-step spread {start[0]:.4f} -> "
          f"{end[0]:.4f} (ratio {end[0] / start[0]:.3f}); one-step mean error {start[1]:.4f} -> {end[1]:.4f} "
          f"(ratio {end[1] / start[1]:.3f}); {report}")
    assert dual.is_dual_patched(tuned)
    assert "a dual-branch LoRA" in report  # every family (tests/test_dual_branch_lora.py)
    assert end[0] < 0.45 * start[0]
    assert end[1] < 0.8 * start[1]
