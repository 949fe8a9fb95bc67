"""Known-answer tests of the training objectives.

1. Linear-Gaussian toy (testing/toy.py) and a straight LR -> HR coupling, whose flow maps are exact:
   the exact network has a zero residual under every flow-map objective, a network bent off
   the map (exact on the diagonal, wrong for s < t) has a clearly positive one, and the
   gradient points back towards the exact map.
2. Structure: one grad-enabled network call per step (targets under stop-gradient), EMA
   targets receive no gradient, time grids as documented.
3. 2-D Gaussian mixture: small MLPs trained 400 steps per objective; the one-step samples of
   the shortcut, Lagrangian and MeanFlow maps beat one Euler step of flow matching (which
   collapses towards the mean) by a wide margin.
"""

import tempfile

import pytest
import torch

from onestep_sr.testing.toy import (ExactNet, gaussian_mixture, LinearGaussian, mixture_batches, sample,
                                    sliced_wasserstein, StraightCoupling, ToyFlowMapNet)
from onestep_sr.training.objectives import make_objective, OBJECTIVES
from onestep_sr.training.trainer import TrainConfig, Trainer

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

GAUSSIAN = LinearGaussian(mu=1.5, sigma=0.5)
STRAIGHT = StraightCoupling(a=0.5, c=0.3)

# (objective, options, the log entry holding the map residual, problem, residual bound of the exact map)
MAP_CASES = [
    # The finest shortcut level chains Euler half-steps (as in Frans et al.): a residual of O(d^2).
    ("shortcut", {"consistency_fraction": 1.0}, "self_consistency", GAUSSIAN, 2e-5),
    ("lagrangian", {"map_fraction": 1.0}, "lagrangian", GAUSSIAN, 1e-10),
    ("eulerian", {"map_fraction": 1.0}, "eulerian", GAUSSIAN, 1e-10),
    ("meanflow", {"map_fraction": 1.0, "velocity": "model", "adaptive_power": 0.0}, "meanflow", GAUSSIAN, 1e-10),
    # Straight paths: the teacher's Euler step is exact, so is the consistency target.
    ("flowsr_consistency", {}, "consistency", STRAIGHT, 1e-10),
    ("shortcut", {"consistency_fraction": 0.5, "endpoint_weight": 1.0}, "endpoint", STRAIGHT, 1e-10),
    # The exact teacher's jump 1 -> t lands on the interpolant, from which the exact map ends on x0.
    ("trajectory_endpoint", {}, "endpoint", STRAIGHT, 1e-10),
    # L1 of float32 round-off: the square root of the L2 residual above
    ("trajectory_endpoint", {"distance": "l1"}, "endpoint", STRAIGHT, 1e-6),
    # one jump to 0 from every point of the straight path lands on x0 exactly
    ("timestep_rectification", {"distance": "l2"}, "rectification", STRAIGHT, 1e-10),
]
# objectives with image terms (ST-LPIPS, total variation): they take [B, 3, H, W] batches only
IMAGE_OBJECTIVES = {"perceptual", "tv_lpips"}


def _batch(problem, n=4096, seed=0):
    batch = problem.sample(n, 2, torch.Generator().manual_seed(seed))
    return {**batch, "lr": 0.5 * batch["x0"] + 0.3}  # an LR latent for ftd; the other objectives ignore it


def _evaluate(name, options, problem, bend, batch):
    net = ExactNet(problem, bend=bend)
    loss, logs = make_objective(name, **options)(net, batch, ema_net=ExactNet(problem, bend=bend),
                                                 generator=torch.Generator().manual_seed(1))
    loss.backward()
    return loss, logs, net.bend.grad.item()


@pytest.mark.parametrize("name,options,key,problem,bound", MAP_CASES)
def test_exact_map_has_zero_residual_and_a_bent_map_does_not(name, options, key, problem, bound):
    batch = _batch(problem)
    _, exact, grad_exact = _evaluate(name, options, problem, 0.0, batch)
    _, bent, grad_up = _evaluate(name, options, problem, 0.1, batch)
    _, _, grad_down = _evaluate(name, options, problem, -0.1, batch)
    assert exact[key] < bound
    assert bent[key] > 1e-4 and bent[key] > 20 * bound
    # Gradient descent moves the bend back to zero; at the exact map there is nothing to undo.
    assert grad_up > 1e-3 and grad_down < -1e-3
    if options.get("distance") != "l1":  # L1's gradient at a zero residual is the sign of round-off
        assert abs(grad_exact) < 1e-6


def test_meanflow_with_the_conditional_velocity_has_the_exact_map_as_fixed_point():
    """With v = x1 - x0 the loss keeps the conditional variance, but its expected gradient
    vanishes at the exact map and points back to it from either side."""
    batch = _batch(GAUSSIAN, n=20000)
    options = {"map_fraction": 1.0, "adaptive_power": 0.0}
    loss, _, grad_exact = _evaluate("meanflow", options, GAUSSIAN, 0.0, batch)
    _, _, grad_up = _evaluate("meanflow", options, GAUSSIAN, 0.1, batch)
    _, _, grad_down = _evaluate("meanflow", options, GAUSSIAN, -0.1, batch)
    assert loss.item() > 0.1  # the conditional variance
    assert grad_up > 0.03 and grad_down < -0.03
    assert abs(grad_exact) < 0.1 * min(grad_up, -grad_down)


def test_flow_matching_of_the_exact_velocity_is_minimal():
    batch = _batch(GAUSSIAN)
    objective = make_objective("flow_matching")

    def loss_with_scale(scale):
        return objective(ExactNet(GAUSSIAN, scale=scale), batch, generator=torch.Generator().manual_seed(1))[0]

    assert loss_with_scale(0.0) < loss_with_scale(0.1)
    assert loss_with_scale(0.0) < loss_with_scale(-0.1)


class RecordingNet(torch.nn.Module):
    """Wraps a net and records (grad enabled, t, s) of each call."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x, t, s, cond=None):
        self.calls.append((torch.is_grad_enabled(), t.detach().clone(), s.detach().clone()))
        return self.inner(x, t, s, cond)


@pytest.mark.parametrize("name", sorted(set(OBJECTIVES) - IMAGE_OBJECTIVES))
def test_one_student_call_with_gradient_and_no_gradient_into_the_ema_target(name):
    student = RecordingNet(ExactNet(GAUSSIAN, scale=0.1, bend=0.1))
    ema = ExactNet(GAUSSIAN, scale=0.1, bend=0.1)  # requires grad on purpose: it must not get any
    loss, logs = make_objective(name)(student, _batch(GAUSSIAN, 256), ema_net=ema,
                                      generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert sum(grad for grad, _, _ in student.calls) == getattr(OBJECTIVES[name], "gradient_calls", 1)
    assert student.inner.scale.grad is not None and student.inner.scale.grad != 0
    assert ema.bend.grad is None and ema.scale.grad is None
    assert all(isinstance(v, float) for v in logs.values())


def test_shortcut_jumps_are_powers_of_two_on_their_grid():
    student = RecordingNet(ExactNet(GAUSSIAN))
    make_objective("shortcut", consistency_fraction=0.5, levels=4)(
        student, _batch(GAUSSIAN, 512), ema_net=None, generator=torch.Generator().manual_seed(0))
    _, t, s = next(call for call in student.calls if call[0])
    t_fm, s_fm, t_sc, s_sc = t[:256], s[:256], t[256:], s[256:]
    assert torch.equal(t_fm, s_fm)  # flow matching on the diagonal
    jump = t_sc - s_sc
    levels = -torch.log2(jump)
    assert torch.allclose(levels, levels.round()) and set(levels.round().int().tolist()) == {0, 1, 2, 3}
    assert (s_sc >= -1e-7).all() and torch.allclose(t_sc / jump, (t_sc / jump).round())


def test_trajectory_endpoint_starts_from_the_teachers_own_first_jump():
    student, teacher = RecordingNet(ExactNet(STRAIGHT)), RecordingNet(ExactNet(STRAIGHT, bend=0.3))
    make_objective("trajectory_endpoint", start_fraction=0.25)(
        student, _batch(STRAIGHT, 400), ema_net=teacher, generator=torch.Generator().manual_seed(0))
    [(grad, t, s)] = student.calls
    [(teacher_grad, t_teacher, s_teacher)] = teacher.calls
    assert grad and not teacher_grad
    assert torch.equal(t[300:], torch.ones(100))  # the one-step quarter starts at the LR source
    assert (t[:300] < 1).all() and (s <= t).all() and (s >= 0).all()
    # the other samples start where the teacher's jump 1 -> t from the source lands
    assert torch.equal(t_teacher, torch.ones(300)) and torch.equal(s_teacher, t[:300])


@pytest.mark.parametrize("student,fine_is_student", [("slow", True), ("fast", False)])
def test_flowsr_time_pairs_come_one_from_each_scheduler(student, fine_is_student):
    objective = make_objective("flowsr_consistency", fast_steps=4, slow_steps=1000, student_scheduler=student)
    t, t_prev = objective.times(5000, torch.zeros(1), torch.Generator().manual_seed(0))
    fine, coarse = (t, t_prev) if fine_is_student else (t_prev, t)
    assert torch.allclose(fine * 1000, (fine * 1000).round(), atol=1e-3)
    assert torch.allclose(coarse * 4, (coarse * 4).round(), atol=1e-5)
    assert (t_prev < t).all() and (t <= 1).all() and (t_prev >= 0).all()
    if fine_is_student:  # the target is the next few-step grid point below
        assert ((t - t_prev) <= 0.25 + 1e-6).all()
        assert set((t_prev * 4).round().int().tolist()) == {0, 1, 2, 3}
    else:  # the target is the adjacent fine time
        assert torch.allclose(t - t_prev, torch.full_like(t, 1e-3), atol=1e-5)


def test_bad_names_and_options_say_what_to_use():
    with pytest.raises(ValueError, match="objective must be one of"):
        make_objective("consistency")
    with pytest.raises(ValueError, match="has no option"):
        make_objective("shortcut", fraction=0.5)
    with pytest.raises(ValueError, match="student_scheduler"):
        make_objective("flowsr_consistency", student_scheduler="medium")
    with pytest.raises(ValueError, match="distance must be one of"):
        make_objective("trajectory_endpoint", distance="huber")
    with pytest.raises(KeyError, match="x1"):
        make_objective("flow_matching")(ExactNet(GAUSSIAN), {"x0": torch.zeros(2, 2)})


# --------------------------------------------------------------------- 2-D Gaussian mixture

TOY_STEPS = 400
# Measured (torch 2.14, CPU, seed 0, 400 steps): one-step sliced W2 to the mixture
# flow-matching Euler 1.17; shortcut 0.34, lagrangian 0.24, meanflow 0.29.
ONE_STEP_RATIO = 0.5  # each map's one-step SWD must be below half of flow matching's


def _train_toy(name):
    torch.manual_seed(0)
    net = ToyFlowMapNet(hidden=128)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(net, name, mixture_batches(256),
                          TrainConfig(output_dir=out, steps=TOY_STEPS, lr=2e-3, ema_decay=0.99,
                                      checkpoint_every=0, progress=False))
        trainer.train()
    return trainer.ema_net


@pytest.fixture(scope="module")
def one_thread():
    """Tiny MLPs run fastest on one thread, and the machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy_reference(one_thread):
    generator = torch.Generator().manual_seed(123)
    return gaussian_mixture(2000, generator), torch.randn(2000, 2, generator=generator)


@pytest.fixture(scope="module")
def flow_matching_one_step(toy_reference):
    target, noise = toy_reference
    swd = sliced_wasserstein(sample(_train_toy("flow_matching"), noise, 1, family="plain"), target)
    assert swd > 0.9  # one Euler step lands near the mean, far from the ring of modes
    return swd


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shortcut", "lagrangian", "meanflow"])
def test_one_step_flow_map_beats_one_euler_step_of_flow_matching(name, toy_reference, flow_matching_one_step):
    target, noise = toy_reference
    swd = sliced_wasserstein(sample(_train_toy(name), noise, 1), target)
    assert swd < ONE_STEP_RATIO * flow_matching_one_step, (name, swd, flow_matching_one_step)
