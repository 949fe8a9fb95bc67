"""Known answers of the realism objectives (training/realism_objectives.py) and the perceptual loss.

A straight LR -> HR coupling, x1 = a x0 + c, has an exact map (testing/toy.py). For the
self-adversarial objective a twin of it is built whose generator is off by a bias b (its samples are
x0 + b) and whose negative-time branch is the exact flow of those biased samples: at b = 0 the fake and
real flows agree (the fixed point), and for b != 0 the velocity difference is -b a / (1 - t + t a),
so the distribution-matching gradient on b has the sign of b (descent removes the bias).
"""

import pytest
import torch

from onestep_sr.testing.toy import ExactNet, StraightCoupling
from onestep_sr.training.objectives import make_objective
from onestep_sr.training.perceptual import perceptual_distance, sampled_perceptual
from onestep_sr.training.realism_objectives import total_variation_map

A, C = 0.5, 0.3
STRAIGHT = StraightCoupling(a=A, c=C)


class BiasedTwin(torch.nn.Module):
    """Exact real flow for t >= 0; for t < 0 the exact flow of the samples x0 + bias; the generator's
    jump 1 -> 0 lands on x0 + bias."""

    def __init__(self, bias: float):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor(float(bias)))

    def forward(self, x, t, s, cond=None):
        t_, s_ = t.reshape(-1, *([1] * (x.ndim - 1))), s.reshape(-1, *([1] * (x.ndim - 1)))
        real = STRAIGHT.average_velocity(x, t_, s_)
        tf = -t_
        x0_fake = (x - (1 - tf) * self.bias - tf * C) / (1 - tf + tf * A)
        fake = (A - 1) * x0_fake + C - self.bias
        generator = (t_ == 1) & (s_ == 0)
        return torch.where(t_ < 0, fake, torch.where(generator, real - self.bias, real))


def _straight_batch(n=2048, dim=2, seed=0):
    return STRAIGHT.sample(n, dim, torch.Generator().manual_seed(seed))


def _self_adversarial(bias, **weights):
    net = BiasedTwin(bias)
    loss, logs = make_objective("self_adversarial", **weights)(net, _straight_batch(),
                                                              generator=torch.Generator().manual_seed(1))
    loss.backward()
    return loss.item(), logs, net.bias.grad.item()


def test_self_adversarial_has_its_fixed_point_at_the_data_distribution():
    loss, logs, grad = _self_adversarial(0.0, distance="l2")  # L1's gradient at zero is the sign of round-off
    assert logs["velocity_gap"] < 1e-6 and logs["fake"] < 1e-10 and logs["real"] < 1e-10
    assert loss < 1e-5 and abs(grad) < 1e-4


@pytest.mark.parametrize("bias", [0.2, -0.2])
def test_distribution_matching_pushes_the_generators_bias_back(bias):
    only_dm = dict(anchor_weight=0.0, real_weight=0.0, fake_weight=0.0, rectification_weight=0.0, dm_weight=1.0)
    _, logs, grad = _self_adversarial(bias, **only_dm)
    # |D| = |b| a / (1 - t + t a) lies between |b| a and |b|: the mean over t ~ U(0, 1) is |b| a ln(1/a) / (1 - a)
    expected_gap = abs(bias) * A * torch.log(torch.tensor(1 / A)).item() / (1 - A)
    assert logs["velocity_gap"] == pytest.approx(expected_gap, rel=0.05)
    assert grad * bias > 0  # gradient descent shrinks the bias


def test_the_fake_branch_term_sees_the_generators_own_samples():
    """With a biased generator but a fake branch that has not learned the bias (the real flow), the
    fake-flow loss is positive: its target is the flow of the generator's samples."""

    class Unlearned(BiasedTwin):
        def forward(self, x, t, s, cond=None):
            out = super().forward(x, t.abs(), s.abs(), cond)
            return out

    net = Unlearned(0.2)
    _, logs = make_objective("self_adversarial")(net, _straight_batch(), generator=torch.Generator().manual_seed(1))
    assert logs["fake"] > 1e-3


def _image_batch(seed=0, n=4, size=32):
    x0 = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return {"x0": x0, "x1": A * x0 + C}


@pytest.mark.parametrize("name", ["perceptual", "tv_lpips"])
def test_image_objectives_vanish_at_the_exact_map_and_point_back_to_it(name):
    objective = make_objective(name, perceptual_samples=2, perceptual_crop=24)
    results = {}
    for bend in (0.0, 0.2, -0.2):
        net = ExactNet(STRAIGHT, bend=bend)
        loss, logs = objective(net, _image_batch(), ema_net=ExactNet(STRAIGHT, bend=bend),
                               generator=torch.Generator().manual_seed(2))
        loss.backward()
        results[bend] = (loss.item(), logs, net.bend.grad.item())
    exact_loss, exact_logs, _ = results[0.0]
    assert exact_loss < 1e-5 and exact_logs["lpips"] < 1e-6
    # the bend offsets the endpoint evenly, which LPIPS (on normalised features) barely sees: the L1 term does
    assert results[0.2][1]["lpips"] > 1e-5 and results[0.2][0] > 100 * exact_loss
    assert results[0.2][2] > 0 > results[-0.2][2]
    if name == "tv_lpips":  # an even offset has the HR image's total variation
        assert exact_logs["tv"] < 1e-6 and results[0.2][1]["tv"] < 1e-6


def test_tv_lpips_holds_the_outputs_total_variation_to_the_hr_images():
    """Noise added to the output (high-frequency artefacts) and a blur of it (lost texture) both cost:
    the TV term measures the mismatch of the total-variation maps either way."""
    objective = make_objective("tv_lpips", perceptual_weight=1.0, tv_weight=1.0, perceptual_samples=2,
                               perceptual_crop=24)
    hr = _image_batch(seed=5)["x0"]
    noisy = hr + 0.2 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(6))
    blurred = torch.nn.functional.avg_pool2d(hr, 3, 1, 1, count_include_pad=False)
    generator = torch.Generator().manual_seed(0)
    tv = {name: objective.image_loss(image, hr, generator)[1]["tv"] for name, image in
          (("same", hr), ("noisy", noisy), ("blurred", blurred))}
    assert tv["same"] == 0 and tv["noisy"] > 0.05 and tv["blurred"] > 0.05


def test_total_variation_map_of_known_images():
    assert torch.equal(total_variation_map(torch.full((1, 1, 5, 5), 0.3)), torch.zeros(1, 1, 4, 4))
    checker = (torch.arange(6)[:, None] + torch.arange(6)[None, :]) % 2
    assert torch.equal(total_variation_map(checker[None, None].float()), torch.full((1, 1, 5, 5), 2.0))


def test_perceptual_distance_is_zero_on_equal_images_grows_with_blur_and_loads_no_extra_modules():
    import sys

    image = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(3)) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(image, 3, 1, 1, count_include_pad=False)
    blurrier = torch.nn.functional.avg_pool2d(image, 7, 1, 3, count_include_pad=False)
    for backbone in ("alex", "vgg"):
        same, mild, strong = (float(perceptual_distance(x, image, backbone)) for x in (image, blurred, blurrier))
        assert same < 1e-7 < mild < strong
    assert "IPython" not in sys.modules and "torchsummary" not in sys.modules
    with pytest.raises(ValueError, match="backbone"):
        perceptual_distance(image, image, "squeeze")


def test_perceptual_distance_takes_windows_below_the_networks_smallest_side():
    # Train SR LoRA's smallest crop is 16 px; the networks reflect-pad their deepest maps and raise
    # below 18 (VGG) / 21 (AlexNet) px, so such windows are compared enlarged by bicubic.
    image = torch.rand(2, 3, 16, 12, generator=torch.Generator().manual_seed(5)) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(image, 3, 1, 1, count_include_pad=False)
    for backbone, enlarged_size in (("vgg", (24, 18)), ("alex", (28, 21))):
        distance = perceptual_distance(blurred, image, backbone)
        assert distance.shape == (2,) and float(perceptual_distance(image, image, backbone).max()) < 1e-7
        enlarged = [torch.nn.functional.interpolate(x, size=enlarged_size, mode="bicubic") for x in (blurred, image)]
        assert torch.allclose(distance, perceptual_distance(*enlarged, backbone), atol=1e-6)
        assert float(distance.min()) > 1e-3


def test_sampled_perceptual_takes_the_last_samples_on_one_window():
    a = torch.rand(4, 3, 40, 40, generator=torch.Generator().manual_seed(4)) * 2 - 1
    b = a.clone()
    b[:2] = -b[:2]  # only the first two differ: they are not among the last two
    assert float(sampled_perceptual(a, b, torch.Generator().manual_seed(0), samples=2, crop=24)) < 1e-7
    assert float(sampled_perceptual(a, b, torch.Generator().manual_seed(0), samples=3, crop=24)) > 1e-3


@pytest.mark.parametrize("samples, crop", [(0, 64), (4, 8)])
def test_a_perceptual_window_that_would_mean_another_one_is_refused(samples, crop):
    # samples 0 would slice the whole batch (a[-0:]); an 8 px window is all padding to the networks
    from onestep_sr.training.adversarial import AdversarialLoRA

    for build in (lambda: make_objective("perceptual", perceptual_samples=samples, perceptual_crop=crop),
                  lambda: AdversarialLoRA(perceptual_weight=1.0, perceptual_samples=samples, perceptual_crop=crop)):
        with pytest.raises(ValueError, match="perceptual_samples >= 1 and perceptual_crop >= 16"):
            build()
