"""The trainer's engine "accelerate" under FSDP2: the shipped configs/accelerate/fsdp_bf16.yaml with only its device
and precision fields changed (use_cpu, mixed_precision "no", 2 processes) shards the default network FlowMapSRNet
(small), and a LoRA on it, over 2 CPU gloo processes. The runs end with the weights of 1 process with the same
global batch; their checkpoints hold the full (unsharded) weights, EMA and optimizer state one process writes;
a run interrupted after a checkpoint and launched again on the same output_dir ends where an uninterrupted run
ends; the exported weights and LoRA files equal the 1-process exports.

A run interrupted on one process resumes on two (FSDP2) and one interrupted on two resumes on one, each ending
where the uninterrupted runs end: the checkpoint's layout does not depend on the world size.

Run as a script, this file is the worker: `accelerate launch` runs it on N processes, phase "run" trains both
networks uninterrupted, a copy "from{N}" that stops at step INTERRUPT after the checkpoint at step
CHECKPOINT_EVERY (resumed at the other world size), and on 2 processes a copy "interrupted" (resumed on 2);
phase "resume" launches "interrupted" again on 2 processes, phase "cross" launches the other world size's
"from" copy; phase "ddp" trains both uninterrupted on 2 processes under DDP (accelerate's --multi_gpu on CPU),
the reference for the order of FSDP2's reductions.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
GLOBAL_BATCH = 8
STEPS = 6
CHECKPOINT_EVERY = 3
INTERRUPT = 4  # the interrupted run stops before its 5th step: its last good checkpoint is step 3's
# max |difference| of weights, optimizer state and exports after STEPS AdamW steps at lr 1e-2, float32. 1 vs 2
# processes: the gradient mean is summed in another order, which AdamW's m / sqrt(v) amplifies where a gradient
# is near 0 (measured 1.6e-06 on the full net, 2.2e-08 on the LoRA, the same under DDP as under FSDP2).
TOLERANCE_WORLD = 1e-5
TOLERANCE = 1e-6  # FSDP2 vs DDP on the same 2 processes, resumed vs uninterrupted (both measured 0)
MODES = ("full", "lora")
CHECKPOINTED = "lora_checkpointed"  # the LoRA run with gradient checkpointing on every block (phase "run" only)


class Interrupted(Exception):
    pass


def _trainer(out: Path, mode: str, name: str, world: int):
    import torch

    from onestep_sr.adapters.lora import LoraSpec
    from onestep_sr.models.flow_map_sr import FlowMapSRNet
    from onestep_sr.training.ftd_objectives import FlowTrajectoryDistillation
    from onestep_sr.training.lora_training import LoRATrainer
    from onestep_sr.training.trainer import TrainConfig, Trainer

    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(64, 3, 8, 8, generator=generator)
    z_hr = 0.5 + 0.5 * noise
    data = [{"x0": z_hr[i], "x1": noise[i], "lr": 0.5 * z_hr[i] + 0.3} for i in range(64)]
    loader = torch.utils.data.DataLoader(data, batch_size=GLOBAL_BATCH // world, shuffle=False)
    torch.manual_seed(0)
    net = FlowMapSRNet(width=16, blocks=2)
    torch.nn.init.normal_(net.conv_out.weight, std=0.02)  # not zero: the LoRA's B = 0 must get gradients
    config = TrainConfig(output_dir=str(out / f"{name}-{mode}"), steps=STEPS, lr=1e-2, progress=False,
                         checkpoint_every=CHECKPOINT_EVERY, mixed_precision="no", ema_decay=0.9, engine="accelerate",
                         gradient_checkpointing="auto" if mode == CHECKPOINTED else "")
    objective = FlowTrajectoryDistillation(lr_fraction=1.0)  # deterministic given the batch
    if mode.startswith("lora"):
        return LoRATrainer(net, LoraSpec(rank=4, target_modules=("conv1", "conv2")), objective, loader, config)
    return Trainer(net, objective, loader, config)


def _finish(trainer, out: Path, mode: str, name: str) -> None:
    import torch

    from onestep_sr.training.sharding import model_state

    if mode.startswith("lora"):
        trainer.export(out / f"{name}-{mode}-raw.safetensors", ema=False)
        trainer.export(out / f"{name}-{mode}-ema.safetensors")
    else:
        trainer.export_weights(out / f"{name}-{mode}-raw.safetensors", ema=False)
        trainer.export_weights(out / f"{name}-{mode}-ema.safetensors")
    param = next(p for p in trainer.net.parameters() if p.requires_grad)
    local = param.to_local() if hasattr(param, "to_local") else param
    weights = model_state(trainer.accelerator, trainer.net, trainer.engine_net)  # on every process
    if trainer.accelerator.is_main_process:
        (out / f"{name}-{mode}.json").write_text(json.dumps({
            "wrapper": type(trainer.engine_net).__name__, "param": type(param).__name__,
            "local": local.numel(), "numel": param.numel(), "losses": trainer.losses, "step": trainer.step,
            "weights": {k: v.tolist() for k, v in weights.items()}}))


def _interrupted_run(out: Path, mode: str, name: str, world: int) -> None:
    trainer = _trainer(out, mode, name, world)

    def stop(step):
        if step == INTERRUPT:
            raise Interrupted

    try:
        trainer.train(on_step=stop)
    except Interrupted:
        pass
    assert trainer.step == INTERRUPT


def _resumed_run(out: Path, mode: str, name: str, world: int) -> None:
    trainer = _trainer(out, mode, name, world)  # the interrupted run's output_dir: resumes from step 3
    assert trainer.step == CHECKPOINT_EVERY, trainer.step
    trainer.train()
    _finish(trainer, out, mode, name)


def _worker(out: Path, phase: str) -> None:
    import torch

    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    for mode in MODES:
        if phase in ("run", "ddp"):
            name = "ddp" if phase == "ddp" else f"world{world}"
            started = time.perf_counter()
            trainer = _trainer(out, mode, name, world)
            trainer.train()
            _finish(trainer, out, mode, name)
            if trainer.accelerator.is_main_process:
                (out / f"{name}-{mode}.seconds").write_text(str(time.perf_counter() - started))
            if phase == "run":
                _interrupted_run(out, mode, f"from{world}", world)
                if world == 2:
                    _interrupted_run(out, mode, "interrupted", world)
        elif phase == "resume":
            _resumed_run(out, mode, "interrupted", world)
        else:  # "cross": the run interrupted at the other world size
            _resumed_run(out, mode, f"from{3 - world}", world)
    if phase == "run":
        trainer = _trainer(out, CHECKPOINTED, f"world{world}", world)
        trainer.train()
        _finish(trainer, out, CHECKPOINTED, f"world{world}")
    if torch.distributed.is_initialized():  # a rank once aborted at exit without it ('terminate called without an
        torch.distributed.barrier()         # active exception', SIGABRT) after writing everything
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_fsdp_config(tmp_path) -> Path:
    """The shipped fsdp_bf16.yaml with its device and precision fields set for 2 CPU processes."""
    import yaml

    config = yaml.safe_load((CONFIGS / "fsdp_bf16.yaml").read_text())
    config.update(use_cpu=True, mixed_precision="no", num_processes=2)
    path = tmp_path / "fsdp_cpu.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _launch(tmp_path, world, phase):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(_free_port())]
    if world == 1 or phase == "ddp":
        command += ["--cpu"] if world == 1 else ["--multi_gpu"]
        command += ["--num_processes", str(world), "--num_machines", "1", "--mixed_precision", "no",
                    "--dynamo_backend", "no"]
    else:
        command += ["--config_file", str(cpu_fsdp_config(tmp_path))]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command + [__file__, str(tmp_path), phase], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-6000:]


def _worst(a: dict, b: dict) -> float:
    import torch

    assert sorted(a) == sorted(b)
    return max(float((torch.as_tensor(a[k]) - torch.as_tensor(b[k])).abs().max()) for k in a)


def test_the_shipped_wrap_list_is_cut_to_the_blocks_the_net_has():
    """accelerate refuses a wrap list naming a class the net lacks, and the shipped configs name FLUX's and
    Qwen-Image's blocks together: the trainer keeps the classes present (none: one unit, as the small net)."""
    import types

    import torch
    import yaml
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from onestep_sr.training.sharding import enable_fsdp

    class DoubleStreamBlock(torch.nn.Linear):
        pass

    class SingleStreamBlock(torch.nn.Linear):
        pass

    names = yaml.safe_load((CONFIGS / "fsdp_bf16.yaml").read_text())["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"]
    flux_like = torch.nn.Sequential(DoubleStreamBlock(2, 2), SingleStreamBlock(2, 2))

    def plugin():
        return FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                              transformer_cls_names_to_wrap=names.split(","))

    with pytest.raises(ValueError, match="Could not find the transformer layer class QwenImageTransformerBlock"):
        plugin().set_auto_wrap_policy(flux_like)  # what accelerate.prepare did with the shipped list
    fitted = plugin()
    enable_fsdp(types.SimpleNamespace(state=types.SimpleNamespace(distributed_type=DistributedType.FSDP,
                                                                  fsdp_plugin=fitted)), flux_like)
    assert fitted.transformer_cls_names_to_wrap == ["DoubleStreamBlock", "SingleStreamBlock"]
    fitted.set_auto_wrap_policy(flux_like)
    assert fitted.auto_wrap_policy(flux_like[0], recurse=False, nonwrapped_numel=0)


@pytest.mark.slow
def test_fsdp_on_two_processes_equals_one_process_and_resumes_and_exports(tmp_path):
    from onestep_sr.files.tensors import load_tensors

    _launch(tmp_path, 1, "run")
    _launch(tmp_path, 2, "run")
    _launch(tmp_path, 2, "resume")
    _launch(tmp_path, 1, "cross")
    _launch(tmp_path, 2, "cross")
    _launch(tmp_path, 2, "ddp")
    lines = []
    for mode in MODES:
        one, two, resumed, ddp, two_then_one, one_then_two = (
            json.loads((tmp_path / f"{name}-{mode}.json").read_text())
            for name in ("world1", "world2", "interrupted", "ddp", "from2", "from1"))
        # really sharded: FSDP2's in-place wrapper, DTensor parameters holding half of each tensor here
        assert one["wrapper"] == "FlowMapSRNet" and two["wrapper"] == "FSDPFlowMapSRNet"
        assert two["param"] == "DTensor" and two["local"] < two["numel"]
        assert ddp["wrapper"] == "DistributedDataParallel" and ddp["param"] == "Parameter"
        assert one["losses"][0] != one["losses"][-1]  # it trained
        worst = {"weights 1 vs 2 processes": _worst(one["weights"], two["weights"]),
                 "weights resumed vs uninterrupted": _worst(two["weights"], resumed["weights"]),
                 "weights FSDP2 vs DDP": _worst(two["weights"], ddp["weights"]),
                 # resumed at the other world size: the steps after the checkpoint sum as that world does
                 "weights 2 then 1 vs 1 processes": _worst(one["weights"], two_then_one["weights"]),
                 "weights 1 then 2 vs 2 processes": _worst(two["weights"], one_then_two["weights"]),
                 "losses 1 vs 2 processes": _worst({"l": one["losses"]}, {"l": two["losses"]}),
                 "losses resumed vs uninterrupted": _worst({"l": two["losses"]}, {"l": resumed["losses"]})}
        # the checkpoints: full weights, EMA and optimizer state, equal to one process's
        ckpt = {name: load_tensors(tmp_path / f"{name}-{mode}" / "checkpoint.safetensors")
                for name in ("world1", "world2", "interrupted", "from2", "from1")}
        for name, (tensors, meta) in ckpt.items():
            assert meta["step"] == STEPS, name
            assert sorted(tensors) == sorted(ckpt["world1"][0]), name
            assert all(tensors[k].shape == ckpt["world1"][0][k].shape for k in tensors), name
            assert any(k.startswith("optimizer.") and k.endswith("exp_avg_sq") for k in tensors)
            assert meta["optimizer"] == ckpt["world1"][1]["optimizer"], name
        worst["checkpoint 1 vs 2 processes"] = _worst(ckpt["world1"][0], ckpt["world2"][0])
        worst["checkpoint resumed vs uninterrupted"] = _worst(ckpt["world2"][0], ckpt["interrupted"][0])
        worst["checkpoint 2 then 1 vs 1 processes"] = _worst(ckpt["world1"][0], ckpt["from2"][0])
        worst["checkpoint 1 then 2 vs 2 processes"] = _worst(ckpt["world2"][0], ckpt["from1"][0])
        for kind in ("raw", "ema"):
            files = {name: load_tensors(tmp_path / f"{name}-{mode}-{kind}.safetensors")[0]
                     for name in ("world1", "world2", "interrupted", "from2", "from1")}
            worst[f"{kind} export 1 vs 2 processes"] = _worst(files["world1"], files["world2"])
            worst[f"{kind} export resumed vs uninterrupted"] = _worst(files["world2"], files["interrupted"])
            worst[f"{kind} export 2 then 1 vs 1 processes"] = _worst(files["world1"], files["from2"])
            worst[f"{kind} export 1 then 2 vs 2 processes"] = _worst(files["world2"], files["from1"])
        seconds = [float((tmp_path / f"world{w}-{mode}.seconds").read_text()) for w in (1, 2)]
        lines.append(f"{mode}: " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items())
                     + f"; {STEPS} steps in {seconds[0]:.1f} s (1 process) / {seconds[1]:.1f} s (2, FSDP2)")
        assert all(v <= (TOLERANCE_WORLD if " 1 vs 2 " in k or " then " in k else TOLERANCE)
                   for k, v in worst.items()), lines[-1]
    # gradient checkpointing under FSDP2 (the blocks' activations recomputed in the backward): the same weights
    plain = json.loads((tmp_path / "world1-lora.json").read_text())
    checkpointed = {w: json.loads((tmp_path / f"world{w}-{CHECKPOINTED}.json").read_text()) for w in (1, 2)}
    assert checkpointed[2]["wrapper"] == "FSDPFlowMapSRNet"
    worst = {"1 process": _worst(plain["weights"], checkpointed[1]["weights"]),
             "2 processes (FSDP2)": _worst(plain["weights"], checkpointed[2]["weights"])}
    lines.append("gradient checkpointing vs none, LoRA weights: " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))
    assert worst["1 process"] <= TOLERANCE and worst["2 processes (FSDP2)"] <= TOLERANCE_WORLD, lines[-1]
    print("\nFSDP2 (configs/accelerate/fsdp_bf16.yaml on CPU, float32), 2 gloo processes vs 1, global batch "
          f"{GLOBAL_BATCH}, tolerance {TOLERANCE_WORLD} (1 vs 2 processes) / {TOLERANCE}:\n" + "\n".join(lines))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2])
