"""Adversarial LoRA training pieces (training/adversarial.py, adapters/lora.py) on known answers."""

import copy

import pytest
import torch

from onestep_sr.adapters.lora import adapters_disabled, add_lora, lora_layers, LoraSpec, set_strength
from onestep_sr.models.flow_map_sr import FlowMapSRNet
from onestep_sr.samplers.flow_map import denoised_from_velocity, jump
from onestep_sr.training.adversarial import AdversarialLoRA, AdversarialLoRATrainer
from onestep_sr.training.discriminators import (FeatureDiscriminator, PatchDiscriminator, discriminator_loss, frozen,
                                                generator_loss, r1_penalty)
from onestep_sr.training.trainer import TrainConfig

SIZE = 32


def tiny_net(condition=True):
    torch.manual_seed(0)
    net = FlowMapSRNet(width=16, blocks=2, condition=condition)
    torch.nn.init.normal_(net.conv_out.weight, std=0.05)
    return net


def with_trained_lora(net, std=0.2):
    add_lora(net, LoraSpec(rank=2))
    with torch.no_grad():
        for layer in lora_layers(net).values():
            torch.nn.init.normal_(layer.lora_B["default"].weight, std=std)
    return net


def test_gan_losses_and_r1_on_known_values():
    real, fake = [torch.tensor([2.0, 0.5])], [torch.tensor([-2.0, 0.0])]
    # hinge: relu(1 - r) + relu(1 + f) = mean(0, 0.5) + mean(0, 1)
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(0.25 + 0.5)
    assert generator_loss(fake, "hinge").item() == pytest.approx(1.0)
    softplus = torch.nn.functional.softplus
    expected = softplus(-real[0]).mean() + softplus(fake[0]).mean()
    assert discriminator_loss(real, fake, "non_saturating").item() == pytest.approx(expected.item())
    # D(x) = sum(a * x): the gradient is a everywhere, so R1 = ||a||^2 per sample
    a = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    x = torch.randn(3, 2, 2, requires_grad=True)
    assert r1_penalty([(a * x).flatten(1).sum(1)], x).item() == pytest.approx(a.square().sum().item())
    with pytest.raises(ValueError, match="gan_loss"):
        generator_loss(fake, "wasserstein")


def test_frozen_blocks_parameter_gradients_but_not_the_input():
    disc = PatchDiscriminator(width=8, layers=2)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    with frozen(disc):
        generator_loss(disc(x, torch.zeros_like(x)), "hinge").backward()
    assert all(p.grad is None for p in disc.parameters()) and x.grad.abs().sum() > 0
    assert all(p.requires_grad for p in disc.parameters())  # restored afterwards


def test_patch_discriminator_learns_a_known_difference():
    torch.manual_seed(0)
    disc = PatchDiscriminator(width=16, layers=3)
    optimizer = torch.optim.Adam(disc.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(40):  # a smooth "upsampled LR" condition; the real image has detail the fake lacks
        cond = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 8, generator=generator), size=32, mode="bicubic")
        real = cond + 0.15 * torch.randn(4, 3, 32, 32, generator=generator)
        loss = discriminator_loss(disc(real, cond), disc(cond, cond), "hinge")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 1.9 and sum(losses[-5:]) / 5 < 1.4  # chance is 2


def test_feature_discriminator_sees_the_base_network_not_the_lora():
    base = tiny_net()
    net = with_trained_lora(copy.deepcopy(base))
    probe = (torch.zeros(1, 3, SIZE, SIZE), torch.zeros(1, 3, SIZE, SIZE))
    disc = FeatureDiscriminator(net, probe, feature_time=0.25)
    assert disc.feature_modules == ("blocks.0", "blocks.1")
    x, cond = torch.randn(2, 3, SIZE, SIZE), torch.randn(2, 3, SIZE, SIZE)
    reference = FeatureDiscriminator(base, probe, feature_time=0.25)
    with torch.no_grad():
        for ours, theirs in zip(disc.features(net, x, cond), reference.features(base, x, cond)):
            torch.testing.assert_close(ours, theirs)  # LoRA off inside, base features exactly
        assert not torch.allclose(net(x, torch.ones(2), torch.zeros(2), cond),
                                  base(x, torch.ones(2), torch.zeros(2), cond))  # and back on after
    fake = x.clone().requires_grad_(True)
    discriminator_loss(disc(x, cond, backbone=net), disc(fake, cond, backbone=net), "hinge").backward()
    assert all(p.grad is not None for p in disc.heads.parameters()) and fake.grad.abs().sum() > 0
    assert all(layer.lora_B["default"].weight.grad is None for layer in lora_layers(net).values())


def test_sr_output_chains_jumps_and_strength_scales_the_update():
    net = with_trained_lora(tiny_net())
    x1, cond = torch.randn(1, 3, SIZE, SIZE), torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        out = AdversarialLoRA(sample_steps=2).sr_output(net, x1, cond)
        half = torch.full((1,), 0.5)
        x_half = jump(x1, denoised_from_velocity(x1, net(x1, torch.ones(1), half, cond), 1.0), 1.0, 0.5)
        expected = denoised_from_velocity(x_half, net(x_half, half, torch.zeros(1), cond), 0.5)
        torch.testing.assert_close(out, expected)
        tuned = net(x1, torch.ones(1), torch.zeros(1), cond)
        set_strength(net, 0.0)
        with adapters_disabled(net):
            base = net(x1, torch.ones(1), torch.zeros(1), cond)
        torch.testing.assert_close(net(x1, torch.ones(1), torch.zeros(1), cond), base)
        set_strength(net, 0.5)
        half_way = net(x1, torch.ones(1), torch.zeros(1), cond)
        halved = copy.deepcopy(net)  # strength 0.5 is the same as half of every B at strength 1
        set_strength(halved, 1.0)
        for layer in lora_layers(halved).values():
            layer.lora_B["default"].weight.mul_(0.5)
        torch.testing.assert_close(half_way, halved(x1, torch.ones(1), torch.zeros(1), cond))
    assert (tuned - base).abs().max() > 1e-2 and (half_way - base).abs().max() > 1e-3


def batches(generator):
    hr = torch.rand(2, 3, SIZE, SIZE, generator=generator) * 2 - 1
    lr = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(hr, 4), scale_factor=4, mode="nearest")
    return {"x0": hr, "x1": lr, "cond": lr}


@pytest.mark.parametrize("discriminator", ["features", "patch"])
def test_training_resumes_exactly(tmp_path, discriminator):
    probe = (torch.zeros(1, 3, SIZE, SIZE), torch.zeros(1, 3, SIZE, SIZE))

    def trainer(steps, output):
        return AdversarialLoRATrainer(tiny_net(), LoraSpec(rank=2, target_modules=("conv1",)),
                                      AdversarialLoRA(),
                                      batches, TrainConfig(output_dir=str(output), steps=steps, lr=1e-3,
                                                           ema_decay=0.9, progress=False),
                                      probe=probe, discriminator=discriminator)

    straight = trainer(2, tmp_path / "straight")
    straight.train()
    trainer(1, tmp_path / "resumed").train()
    resumed = trainer(2, tmp_path / "resumed")
    assert resumed.step == 1
    resumed.train()
    for ours, theirs in zip(resumed.net.state_dict().values(), straight.net.state_dict().values()):
        torch.testing.assert_close(ours, theirs)
    assert straight.losses == pytest.approx(resumed.losses)
