"""FluxSR's flow trajectory distillation (training/ftd_objectives.py) on a toy whose teacher map is known.

Teacher: the exact velocity of `LinearGaussian` (data N(1.5, 0.5²), standard noise), whose flow map from
noise is known in closed form, X(ε, 1 -> 0) = 1.5 + 0.5 ε. Its 20-step Euler result is computed here by
the test's own loop (not by the code under test) and checked against that closed form. The pairs are
(ε, z_H = teacher_20(ε)); the LR latent is z_L = 0.5 z_H + 0.3 (invertible, so a perfect student exists
and its answer is known: z_H = (z_L - 0.3) / 0.5). The student is a small MLP, one Euler step from sigma
T_L: ẑ_H = z_L - T_L u_φ(z_L, T_L).
"""

import importlib
import shutil

import pytest
import torch

from onestep_sr.testing.toy import LinearGaussian, ToyFlowMapNet
from onestep_sr.training.ftd_objectives import FlowTrajectoryDistillation, ftd_path, ftd_target, student_velocity
from onestep_sr.training.objectives import make_objective
from onestep_sr.training.trainer import TrainConfig, Trainer

TEACHER = LinearGaussian(mu=1.5, sigma=0.5)
LR_TIME = 0.5
MARGIN = 0.01  # RMS error of the one-step student against the teacher's 20-step result (data sd 0.5; measured 0.0029 under the trainer's default precision)


def teacher_20_steps(noise):
    x = noise.clone()
    times = torch.linspace(1.0, 0.0, 21)
    for t, s in zip(times[:-1], times[1:]):
        x = x - (t - s) * TEACHER.velocity(x, t)
    return x


def degrade(z_hr):
    return 0.5 * z_hr + 0.3


def pairs(generator, n):
    noise = torch.randn(n, 2, generator=generator)
    z_hr = teacher_20_steps(noise)
    return {"x0": z_hr, "x1": noise, "lr": degrade(z_hr)}


def one_step(net, z_lr):
    t = torch.full((z_lr.shape[0],), LR_TIME)
    with torch.no_grad():
        return z_lr - LR_TIME * net(z_lr, t, torch.zeros_like(t))


def rms(a, b):
    return float((a - b).square().mean().sqrt())


def test_the_teachers_20_steps_are_close_to_its_known_map():
    noise = torch.randn(4096, 2, generator=torch.Generator().manual_seed(0))
    assert rms(teacher_20_steps(noise), 1.5 + 0.5 * noise) < 0.05  # Euler error 0.036: the student must match the 20 steps, not the map


def test_the_identity_targets_are_known_answers():
    z_hr, z_lr, noise = torch.tensor([2.0]), torch.tensor([1.3]), torch.tensor([-0.4])
    # sign +1: v_φ = (z_L - z_H) / T_L = (1.3 - 2.0) / 0.5
    assert student_velocity(z_hr, z_lr, noise, 0.5).item() == pytest.approx(-1.4)
    # sign -1: (v_θ + (1 - T_L) u) / T_L, v_θ = -2.4, u = (-0.4 - 1.3) / 0.5 = -3.4 -> (-2.4 - 1.7) / 0.5
    assert student_velocity(z_hr, z_lr, noise, 0.5, sign=-1).item() == pytest.approx(-8.2)
    for t in (0.5, 0.6, 0.8, 1.0):  # one jump from any point of the noise -> LR path lands on z_H
        z_t = ftd_path(z_lr, noise, t, 0.5)
        assert (z_t - t * ftd_target(z_hr, z_lr, noise, t, 0.5)).item() == pytest.approx(2.0)
    assert ftd_path(z_lr, noise, 0.5, 0.5).item() == pytest.approx(1.3)
    assert ftd_path(z_lr, noise, 1.0, 0.5).item() == pytest.approx(-0.4)
    assert ftd_target(z_hr, z_lr, noise, 1.0, 0.5).item() == pytest.approx(-2.4)  # the teacher's own v_θ


def test_options_are_checked():
    for bad in ({"sign": 0}, {"lr_time": 1.0}, {"lr_fraction": 2.0}, {"distance": "l3"},
                {"diversification_weight": -1.0}):
        with pytest.raises(ValueError):
            make_objective("ftd", **bad)
    with pytest.raises(ValueError, match="'lr'"):
        make_objective("ftd")(ToyFlowMapNet(), {"x0": torch.zeros(2, 2), "x1": torch.zeros(2, 2)})


def train_student(tmp_path, sign, steps=1500):
    torch.manual_seed(0)
    net = ToyFlowMapNet(hidden=64, depth=3)
    held_out = pairs(torch.Generator().manual_seed(123), 2048)
    start = rms(one_step(net, held_out["lr"]), held_out["x0"])
    trainer = Trainer(net, FlowTrajectoryDistillation(lr_time=LR_TIME, sign=sign),
                      lambda generator: pairs(generator, 256),
                      TrainConfig(output_dir=str(tmp_path / f"sign{sign}"), steps=steps, lr=3e-3,
                                  lr_schedule="cosine", ema_decay=None, checkpoint_every=0, progress=False))
    trainer.train()
    end = rms(one_step(trainer.net, held_out["lr"]), held_out["x0"])
    return start, end


@pytest.mark.slow
def test_the_one_step_student_reaches_the_teachers_20_step_result(tmp_path):
    start, end = train_student(tmp_path, sign=1)
    wrong_start, wrong_end = train_student(tmp_path, sign=-1)
    print(f"\nFTD toy, one-step student vs teacher's 20 steps (RMS): sign +1 {start:.4f} -> {end:.4f} "
          f"(margin {MARGIN}); sign -1 {wrong_start:.4f} -> {wrong_end:.4f}")
    assert end < MARGIN < start
    assert wrong_end > 50 * MARGIN  # the other reading of the figure is not the identity


# ---------------------------------------------------------------- attention diversification (tiny FLUX, host)


def test_mean_pairwise_cosine_known_answers():
    from onestep_sr.training.attention_diversity import mean_pairwise_cosine

    same = torch.ones(1, 5, 3)  # all tokens equal: 1
    orthogonal = torch.eye(4)[None]  # mutually orthogonal: 0
    opposite = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])  # one pair, cosine -1
    assert mean_pairwise_cosine(same).item() == pytest.approx(1.0)
    assert mean_pairwise_cosine(orthogonal).item() == pytest.approx(0.0, abs=1e-7)
    assert mean_pairwise_cosine(opposite).item() == pytest.approx(-1.0)
    tokens = torch.randn(2, 7, 5, generator=torch.Generator().manual_seed(0))
    unit = torch.nn.functional.normalize(tokens, dim=-1)
    brute = torch.stack([(unit[b] @ unit[b].T - torch.eye(7)).sum() / 42 for b in range(2)])
    assert torch.allclose(mean_pairwise_cosine(tokens), brute, atol=1e-6)


BLOCKS = "double_blocks.0,single_blocks.0"


def token_similarity(package, model, positive, z):
    """Mean token similarity of the hooked blocks of `model` (its LoRA patches applied) at sigma T_L."""
    import comfy.model_management

    native = importlib.import_module(f"{package}.bridge.native_training")
    hooks = importlib.import_module(f"{package}.training.attention_diversity")
    comfy.model_management.load_models_gpu([model])
    net = native.NativeFlowNet(model.model, native.model_conditioning(model, positive, z))
    t = torch.full((z.shape[0],), LR_TIME)
    with torch.no_grad(), hooks.TokenSimilarity(net, BLOCKS.split(",")) as similarity:
        net(z, t, torch.zeros_like(t))
    return similarity.value().item()


@pytest.mark.slow
def test_attention_diversification_lowers_token_similarity_on_tiny_flux(comfy_host):
    package = comfy_host.extension_module.__name__
    pairs_bridge = importlib.import_module(f"{package}.bridge.teacher_pairs")
    ftd = importlib.import_module(f"{package}.bridge.ftd_training")
    from onestep_sr.testing import tiny_models

    with torch.inference_mode():
        model = tiny_models.build_model("flux")
    positive = tiny_models.conditioning("flux")
    shutil.rmtree(pairs_bridge.pairs_folder("adl_pairs"), ignore_errors=True)
    with torch.inference_mode():
        pairs_bridge.teacher_pairs(model, tiny_models.build_vae(16), positive, tiny_models.conditioning("flux", seed=1),
                                   {"samples": torch.zeros(1, 16, 16, 16)}, "adl_pairs", 8, 0, 4, 1.0, "euler",
                                   "simple", 4)
    z = torch.randn(4, 16, 16, 16, generator=torch.Generator().manual_seed(3))
    base = token_similarity(package, model, positive, z)
    results = {}
    for weight in (0.0, 1.0):
        with torch.inference_mode():
            tuned, _, _ = ftd.train_ftd_lora(model, "adl_pairs", f"adl_{weight:g}", 40, 4, 8, 3e-3, LR_TIME, "+1",
                                             weight, 0, overwrite=True, positive=positive,
                                             diversification_blocks=BLOCKS)
        results[weight] = token_similarity(package, tuned, positive, z)
    print(f"\ntoken similarity on tiny FLUX ({BLOCKS}): base {base:.4f}, FTD alone {results[0.0]:.4f}, "
          f"FTD + diversification (weight 1) {results[1.0]:.4f}")
    assert results[1.0] < 0.8 * results[0.0]  # measured 0.0313 -> 0.0181 (-42 %)
