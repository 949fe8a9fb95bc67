"""The memory accounting of benchmarks/memory.py (testing/memory.py's TensorMemory and measure_step) on cases
whose answer is known by hand: allocations and frees, views and in-place results (no new memory), a gradient
made in the backward, AdamW's state, and the full-size prediction's arithmetic."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from onestep_sr.testing.memory import MIB, TensorMemory

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def memory_benchmark():
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("memory_benchmark", BENCHMARKS / "memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_allocations_and_frees_are_counted_exactly():
    with TensorMemory() as memory:
        a = torch.empty(1000)            # 4000 bytes
        b = torch.empty(500)             # 2000
        del a                            # 2000 live
        c = torch.empty(3000)            # 14000 live: the peak
        view = c.view(30, 100)           # a view: no new storage
        c.add_(1.0)                      # in place: none either
        assert memory.current == 14000 and view.shape == (30, 100)
        del b, c, view
    assert memory.current == 0 and memory.dynamic_peak == 14000


def test_static_tensors_and_the_gradient_made_in_backward():
    weight = torch.nn.Parameter(torch.randn(256, 128))
    x = torch.randn(8, 128)
    with TensorMemory(static=[weight, x]) as memory:
        (x @ weight.T).sum().backward()
    assert memory.static_bytes == 256 * 128 * 4 + 8 * 128 * 4
    assert memory.current == 256 * 128 * 4  # only weight.grad outlives the step
    # the [8, 256] product is freed once summed (sum's backward keeps only its shape; mm keeps x and the weight,
    # both static), so the peak is the gradient plus two 4-byte scalars: the loss and the seed of its backward
    assert memory.dynamic_peak == 256 * 128 * 4 + 4 + 4


def test_measure_step_counts_weights_and_adamw_state(memory_benchmark):
    layer = torch.nn.Linear(256, 128, bias=False)
    x = torch.randn(8, 256)

    def step(optimizer):
        layer(x).square().mean().backward()
        optimizer.step()

    row = memory_benchmark.measure_step({"layer": layer}, list(layer.parameters()), step)
    weight = 256 * 128 * 4
    assert row["weights_mib"] == {"layer": weight / MIB}
    assert row["optimizer_state_mib"] == (2 * weight + 4) / MIB  # exp_avg, exp_avg_sq, the float32 step count
    assert row["static_mib"] == (3 * weight + 4) / MIB
    assert row["step_peak_mib"] >= weight / MIB  # the gradient at least
    assert row["peak_mib"] == row["static_mib"] + row["step_peak_mib"]


def test_lora_parameter_count_and_prediction_arithmetic(memory_benchmark, comfy_host):
    net = torch.nn.Module()
    net.attn = torch.nn.Module()
    net.attn.qkv = torch.nn.Linear(10, 30)
    net.attn.other = torch.nn.Linear(10, 10)
    net.proj = torch.nn.Linear(20, 5)
    # rank 4: qkv 4 (10 + 30) + proj 4 (20 + 5); 'other' is no target
    assert memory_benchmark.lora_parameters(net, 4, ("qkv", "proj")) == 160 + 100
    predicted = memory_benchmark.predict(rank=16)
    flux = predicted["FLUX.1"]
    assert 11.8e9 < flux["parameters"] < 12.0e9  # FLUX.1-dev's transformer: 11.9 B
    assert 20.3e9 < predicted["Qwen-Image"]["parameters"] < 20.6e9  # Qwen-Image's: 20.4 B
    base = flux["parameters"] * 2 / 2**30
    lora = flux["lora_parameters"] * 16 / 2**30
    assert flux["bf16"]["self_adversarial_gib"] == pytest.approx(base + lora)
    assert flux["bf16"]["teacher_student_d_gib"] == pytest.approx(2 * base + lora)
    assert flux["fp8"]["base_gib"] == pytest.approx(base / 2)
