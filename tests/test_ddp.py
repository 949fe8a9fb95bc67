"""Two CPU processes (gloo) launched by `accelerate launch` train the same network in step.

Run as a script, this file is the worker: each rank builds its net from a different seed (the
trainer must make them start equal), trains a JVP objective (meanflow) and an EMA objective
(shortcut) on rank-specific data for a few steps, and writes hashes of its weights.
"""

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORLD = 2


def _digest(state_dict) -> str:
    return hashlib.sha256(b"".join(name.encode() + state_dict[name].detach().cpu().contiguous().numpy().tobytes()
                                   for name in sorted(state_dict))).hexdigest()


def _worker(out: Path) -> None:
    import torch

    from onestep_sr.training.trainer import TrainConfig, Trainer
    from onestep_sr.testing.toy import mixture_batches, ToyFlowMapNet

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    torch.manual_seed(rank)  # different initial weights per rank on purpose
    net = ToyFlowMapNet(hidden=32, depth=2)
    initial = _digest(net.state_dict())
    for objective in ("meanflow", "shortcut"):
        trainer = Trainer(net, objective, mixture_batches(64),
                          TrainConfig(output_dir=str(out / objective), steps=4, lr=1e-2, progress=False,
                                      checkpoint_every=0))
        trainer.train()
    line = [trainer.accelerator.num_processes, initial, _digest(trainer.net.state_dict()),
            _digest(trainer.ema_net.state_dict())]
    (out / f"rank{trainer.accelerator.process_index}.txt").write_text(" ".join(map(str, line)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_end_with_identical_trained_weights(tmp_path):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(WORLD),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), __file__, str(tmp_path)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [(tmp_path / f"rank{r}.txt").read_text().split() for r in range(WORLD)]
    assert all(line[0] == str(WORLD) for line in lines)  # really two processes
    initial = [line[1] for line in lines]
    assert initial[0] != initial[1]  # they started apart...
    assert lines[0][2] == lines[1][2] and lines[0][3] == lines[1][3]  # ...and ended identical
    assert lines[0][2] not in initial  # and trained
    # The checkpoint (main process only) holds the same weights.
    from onestep_sr.files.tensors import load_tensors
    tensors, meta = load_tensors(tmp_path / "shortcut" / "checkpoint.safetensors")
    assert meta["step"] == 4
    assert _digest({k[4:]: v for k, v in tensors.items() if k.startswith("net.")}) == lines[0][2]


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
