"""The trainer's engine "accelerate" (TrainConfig.engine): the net prepared by accelerate (DDP over gloo here; FSDP
or DeepSpeed from a launch config on GPUs) on 2 CPU processes trains to the same weights as 1 process with the
same global batch, and JVP objectives, which DDP's forward cannot run inside torch.func.jvp, are refused there.

Run as a script, this file is the worker: `accelerate launch` runs it on N processes; each trains the FTD
objective (deterministic given the batch: every sample at t = T_L) on the toy pairs of tests/test_ftd.py from
a DataLoader that accelerate shards (process batch GLOBAL_BATCH / N), then tries meanflow under the engine.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

GLOBAL_BATCH = 16
STEPS = 5
TOLERANCE = 1e-6  # max |weight difference| after STEPS AdamW steps (float32; reductions in another order)


def _worker(out: Path) -> None:
    import torch

    from onestep_sr.testing.toy import ToyFlowMapNet
    from onestep_sr.training.ftd_objectives import FlowTrajectoryDistillation
    from onestep_sr.training.trainer import TrainConfig, Trainer

    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(256, 2, generator=generator)
    z_hr = 1.5 + 0.5 * noise
    data = [{"x0": z_hr[i], "x1": noise[i], "lr": 0.5 * z_hr[i] + 0.3} for i in range(256)]
    loader = torch.utils.data.DataLoader(data, batch_size=GLOBAL_BATCH // world, shuffle=False)
    torch.manual_seed(0)
    net = ToyFlowMapNet(hidden=32, depth=2)
    trainer = Trainer(net, FlowTrajectoryDistillation(lr_fraction=1.0), loader,
                      TrainConfig(output_dir=str(out / f"world{world}"), steps=STEPS, lr=1e-2, progress=False,
                                  checkpoint_every=0, mixed_precision="no", ema_decay=None, engine="accelerate"))
    wrapper = type(trainer.engine_net).__name__
    trainer.train()
    refused = ""
    try:
        Trainer(ToyFlowMapNet(hidden=8, depth=1), "meanflow", lambda g: {"x0": torch.zeros(2, 2), "x1": torch.zeros(2, 2)},
                TrainConfig(output_dir=str(out / f"jvp{world}"), steps=1, progress=False, mixed_precision="no",
                            engine="accelerate"))
    except ValueError as error:
        refused = str(error)
    if trainer.accelerator.is_main_process:
        weights = {k: v.tolist() for k, v in trainer.net.state_dict().items()}
        (out / f"world{world}.json").write_text(json.dumps({"wrapper": wrapper, "weights": weights,
                                                             "losses": trainer.losses, "refused": refused}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path, world):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(world), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    command += ["--multi_gpu"] if world > 1 else ["--cpu"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command + [__file__, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((tmp_path / f"world{world}.json").read_text())


@pytest.mark.slow
def test_two_processes_under_the_engine_equal_one_process_with_the_same_global_batch(tmp_path):
    import torch

    one, two = _launch(tmp_path, 1), _launch(tmp_path, 2)
    assert two["wrapper"] == "DistributedDataParallel" and one["wrapper"] == "ToyFlowMapNet"
    worst = max(float((torch.tensor(one["weights"][k]) - torch.tensor(two["weights"][k])).abs().max())
                for k in one["weights"])
    print(f"\nengine 'accelerate', 1 vs 2 gloo processes, global batch {GLOBAL_BATCH}, {STEPS} steps: max |weight "
          f"difference| {worst:.3g}; losses {one['losses'][-1]:.6f} / {two['losses'][-1]:.6f}")
    assert worst <= TOLERANCE
    assert one["losses"][0] != one["losses"][-1]  # it trained
    assert one["refused"] == ""  # one process: nothing is wrapped, meanflow runs
    assert "meanflow" in two["refused"] and "aten::copy_" in two["refused"] and "manual" in two["refused"]


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
