"""Gradient checkpointing (training/checkpointing.py, TrainConfig.gradient_checkpointing): the same loss and
gradients as without it (to 1e-6), less peak tensor memory (testing/memory.py counts it exactly on the
CPU), the module unchanged after release, and JVP objectives refused with the reason."""

import copy

import pytest
import torch

from onestep_sr.models.flow_map_sr import FlowMapSRNet
from onestep_sr.testing.memory import TensorMemory
from onestep_sr.training.checkpointing import checkpoint_blocks, checkpointable_blocks, release_blocks
from onestep_sr.training.objectives import make_objective
from onestep_sr.training.trainer import TrainConfig, Trainer

TOLERANCE = 1e-6


def network():
    torch.manual_seed(0)
    net = FlowMapSRNet(channels=3, stride=2, width=32, blocks=6, family="shortcut", condition=True)
    torch.nn.init.normal_(net.conv_out.weight, std=0.02)  # not the zero head, so every gradient is non-zero
    return net


def batch():
    generator = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 32, 32, generator=generator) * 2 - 1
    x1 = torch.rand(4, 3, 32, 32, generator=generator) * 2 - 1
    return {"x0": x0, "x1": x1, "cond": x1}


def loss_grads_peak(net, data):
    objective = make_objective("flow_matching")
    with TensorMemory(static=[*net.parameters(), *data.values()]) as memory:
        loss, _ = objective(net, data, generator=torch.Generator().manual_seed(2))
        loss.backward()
    grads = {name: p.grad.clone() for name, p in net.named_parameters()}
    return loss.item(), grads, memory.peak_bytes


def test_same_gradients_and_lower_peak_memory():
    plain, checkpointed = network(), network()
    blocks = checkpoint_blocks(checkpointed, "auto")
    assert len(blocks) == 6
    data = batch()
    loss_a, grads_a, peak_a = loss_grads_peak(plain, data)
    loss_b, grads_b, peak_b = loss_grads_peak(checkpointed, data)
    worst = max(float((grads_a[k] - grads_b[k]).abs().max()) for k in grads_a)
    print(f"\ngradient checkpointing, 6 blocks: max |grad difference| {worst:.3g}; peak tensor memory "
          f"{peak_a / 2**20:.2f} MiB -> {peak_b / 2**20:.2f} MiB ({peak_b / peak_a:.2f}x)")
    assert abs(loss_a - loss_b) <= TOLERANCE and worst <= TOLERANCE
    assert peak_b < 0.8 * peak_a
    release_blocks(blocks)
    assert all("forward" not in block.__dict__ for block in checkpointed.blocks)


def test_block_selection_by_name_and_errors():
    net = network()
    assert [name for name, _ in checkpointable_blocks(net, "blocks")] == [f"blocks.{i}" for i in range(6)]
    assert [name for name, _ in checkpointable_blocks(net, "blocks.2")] == ["blocks.2"]
    with pytest.raises(ValueError, match="no block matching"):
        checkpointable_blocks(net, "double_blocks")


def test_the_trainer_option_trains_the_same_and_keeps_the_ema_plain(tmp_path):
    results = []
    for option in ("", "auto"):
        net = network()
        trainer = Trainer(net, "shortcut", lambda generator: batch(),
                          TrainConfig(output_dir=str(tmp_path / (option or "off")), steps=3, lr=1e-3, progress=False,
                                      checkpoint_every=0, gradient_checkpointing=option))
        trainer.train()
        results.append(copy.deepcopy(trainer.net.state_dict()))
        assert all("forward" not in block.__dict__ for block in trainer.ema_net.blocks)
    worst = max(float((results[0][k] - results[1][k]).abs().max()) for k in results[0])
    assert worst <= 1e-5, worst  # three AdamW steps of identical gradients (up to float rounding)


def test_jvp_objectives_are_refused_with_checkpointing(tmp_path):
    with pytest.raises(ValueError, match="torch.func.jvp"):
        Trainer(network(), "meanflow", lambda generator: batch(),
                TrainConfig(output_dir=str(tmp_path), steps=1, progress=False, gradient_checkpointing="auto"))
