"""A small, task-agnostic training loop for flow-map networks (accelerate: one process, DDP or FSDP2).

    trainer = Trainer(net, "shortcut", batches, TrainConfig(output_dir="runs/x", steps=2000),
                      metadata={"family": "shortcut", "start_mode": "lr"})
    trainer.train(on_step=report)          # resumes from runs/x/checkpoint.safetensors if present
    trainer.export_weights("weights/x.safetensors")    # EMA weights + metadata, for inference

`batches` is either a callable ``batches(generator) -> batch`` (synthetic data drawn from the
trainer's per-step generator, so a resumed run is bit-identical) or an iterable of batch dicts
(e.g. a torch DataLoader; it is sharded across processes by accelerate, cycled over epochs and
fast-forwarded on resume). A batch is ``{"x0", "x1", "cond"?}`` (see objectives.py).

Run it unchanged on several processes with ``accelerate launch --num_processes N script.py``.

The run draws from torch's global RNG (dropout, peft's initialisation) only inside `seeded_rng`,
which forks it: training inside a ComfyUI process leaves what later nodes draw unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..files.tensors import load_tensors, prefixed, save_tensors, unprefixed
from ..models.precision import native_bf16
from .checkpoint import FORMAT, CheckpointMismatch, flatten_optimizer, shape_mismatches, unflatten_optimizer
from .checkpointing import JVP_OBJECTIVES, checkpoint_blocks
from .ema import make_ema, update_ema
from .objectives import make_objective, objective_options
from .plotting import loss_curve
from .processes import average_gradients, broadcast_state
from .sharding import enable_fsdp, gathered, load_model_state, load_optimizer_state, model_state, optimizer_state

CHECKPOINT_NAME = "checkpoint.safetensors"
LOSS_CURVE_NAME = "loss_curve.png"
LR_SCHEDULES = ("constant", "cosine")
ENGINES = ("manual", "accelerate")
# Objectives engine "accelerate" refuses on several processes, with what torch 2.14 / accelerate 1.16 raised
# when DDP's forward ran inside torch.func.jvp (tests/test_engine_parallel.py; the manual engine trains them).
_DDP_COPY = ("DistributedDataParallel's forward inside torch.func.jvp fails (RuntimeError: During a grad (vjp, jvp, "
             "grad, etc) transform, the function provided attempted to call in-place operation (aten::copy_) that "
             "would mutate a captured Tensor)")
ENGINE_REFUSED = {
    "meanflow": _DDP_COPY, "lagrangian": _DDP_COPY,
    "eulerian": ("DistributedDataParallel's forward inside torch.func.jvp fails (RuntimeError: Cannot access data "
                 "pointer of Tensor that doesn't have storage)"),
    "adversarial_lora": "it reads the generator and discriminator inside the module it trains, which the wrapper hides",
}
# Metadata keys the trainer writes itself; the caller's metadata may not use them.
RESERVED_METADATA = ("format", "step", "objective", "objective_options", "config", "optimizer", "precision")


@dataclass
class TrainConfig:
    """Everything that shapes a run. All of it is saved in the checkpoint metadata ("config")."""

    output_dir: str
    steps: int = 1000                 # optimizer steps in total (a resumed run continues to this)
    seed: int = 0
    lr: float = 1e-4
    lr_schedule: str = "constant"     # "constant", or "cosine": lr -> 0 along a half cosine over `steps`
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_accumulation: int = 1        # micro-batches per optimizer step
    max_grad_norm: float | None = 1.0  # None: no clipping
    ema_decay: float | None = 0.999   # None: no EMA copy (targets then come from the net itself)
    mixed_precision: str = "auto"     # "auto" (bf16 where the device computes it natively, else off), "no", "bf16", "fp16"
    checkpoint_every: int = 500       # optimizer steps between checkpoints (0: only at the end)
    resume: bool = True               # continue from output_dir's checkpoint when there is one
    cpu: bool = False                 # train on the CPU even if a GPU is present
    progress: bool = True             # tqdm bar (main process only)
    gradient_checkpointing: str = ""  # "" off; "auto" or block paths: torch.utils.checkpoint on them (checkpointing.py)
    engine: str = "manual"            # "manual": broadcast + all-reduce here (processes.py); "accelerate": the net is
                                      # prepared by accelerate (DDP, or FSDP / DeepSpeed from the launch config)

    def __post_init__(self):
        checks = {"steps": self.steps >= 1, "grad_accumulation": self.grad_accumulation >= 1,
                  "lr": self.lr > 0, "checkpoint_every": self.checkpoint_every >= 0,
                  "ema_decay": self.ema_decay is None or 0.0 <= self.ema_decay <= 1.0,
                  "mixed_precision": self.mixed_precision in ("auto", "no", "bf16", "fp16"),
                  "lr_schedule": self.lr_schedule in LR_SCHEDULES, "engine": self.engine in ENGINES}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid TrainConfig field(s) {bad}: steps, grad_accumulation >= 1; "
                             "lr > 0; checkpoint_every >= 0; ema_decay in [0, 1]; "
                             f"mixed_precision in auto/no/bf16/fp16; lr_schedule in {LR_SCHEDULES}; engine in {ENGINES}")

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based): a function of the step alone,
        so a resumed run continues the same schedule."""
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, self.steps) / self.steps))
        return self.lr


@contextlib.contextmanager
def seeded_rng(seed: int | None = None):
    """torch's global RNG (CPU and every CUDA device) forked for the block and restored after it;
    seeded with `seed` when given."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def _step_seed(seed: int, rank: int, micro_step: int) -> int:
    """A seed per (run, process, micro-batch): runs resume exactly, processes draw differently."""
    return (seed * 1_000_003 + rank * 998_244_353 + micro_step * 6_700_417) % (2 ** 63 - 1)


class Trainer:
    """Trains `net` with `objective` on `batches`; see the module docstring for the contract.

    net:       torch.nn.Module called as net(x, t, s, cond) -> u.
    objective: an objective object, or a name of objectives.OBJECTIVES (default options).
    batches:   callable(generator) -> batch, or an iterable of batches.
    config:    TrainConfig.
    metadata:  JSON-serialisable dict stored in every checkpoint and export (family, start_mode,
               scales, data_manifest_hash, ...). `trainer.metadata` may be updated during the
               run; the next checkpoint records the new values.
    """

    def __init__(self, net: torch.nn.Module, objective, batches, config: TrainConfig,
                 metadata: dict | None = None):
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration

        self.config = config
        self.objective = make_objective(objective) if isinstance(objective, str) else objective
        self.metadata = dict(metadata or {})
        clash = sorted(set(self.metadata) & set(RESERVED_METADATA))
        if clash:
            raise ValueError(f"metadata keys {clash} are written by the trainer; rename them")
        self.output_dir = Path(config.output_dir)

        # Without a GPU accelerate only sets up multi-process (gloo) training when told cpu=True.
        cpu = config.cpu or not (torch.cuda.is_available() or torch.backends.mps.is_available())
        precision = config.mixed_precision
        if precision == "auto":
            precision = "bf16" if native_bf16("cpu" if cpu else "cuda") else "no"  # see models/precision.py
        self.accelerator = Accelerator(mixed_precision=precision, cpu=cpu,
                                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
        # engine "manual": the net unwrapped (DDP's forward fails inside torch.func.jvp), started equal and its gradients
        # averaged here (processes.py); "accelerate": the objective calls accelerate's wrapper (or FSDP2's sharded net)
        self.net = net.to(self.accelerator.device)
        self.ema_net = None if config.ema_decay is None else make_ema(self.net)
        self.checkpointed_blocks = []
        if config.gradient_checkpointing:  # after the EMA copy: the copy keeps its blocks' own forward
            if self.objective.name in JVP_OBJECTIVES:
                raise ValueError(f"gradient_checkpointing cannot be combined with {self.objective.name!r}: it "
                                 "differentiates the network by torch.func.jvp, whose dual tensors checkpoint's recomputation "
                                 "does not replay (torch raises CheckpointError: a different number of tensors saved in "
                                 "forward and recomputation); train it without checkpointing")
            self.checkpointed_blocks = checkpoint_blocks(self.net, config.gradient_checkpointing)
        trainable = [p for p in self.net.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("the network has no parameter that requires grad: nothing to train")
        optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=tuple(config.betas),
                                      weight_decay=config.weight_decay)
        self.engine_net = self.net
        if config.engine == "accelerate":
            self._check_engine()
            enable_fsdp(self.accelerator, self.net)  # FSDP2 shards the net in place (engine_net is net)
            self.engine_net, self.optimizer = self.accelerator.prepare(self.net, optimizer)
        else:
            self.optimizer = self.accelerator.prepare(optimizer)
        self._broadcast_state()
        self.batches = batches
        if isinstance(batches, torch.utils.data.DataLoader):
            self.batches = self.accelerator.prepare(batches)
        self.rng = torch.Generator(device=self.accelerator.device)
        self.step = 0
        self.losses: list[float] = []

        checkpoint = self.checkpoint_path
        if checkpoint.exists():
            if not config.resume:
                raise FileExistsError(f"{checkpoint} exists and TrainConfig.resume is False: set resume=True "
                                      "to continue that run or choose another output_dir")
            self.load_checkpoint(checkpoint)

    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / CHECKPOINT_NAME

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    # ---------------------------------------------------------------- processes

    def _check_engine(self) -> None:
        """The objectives engine "accelerate" cannot run (see ENGINE_REFUSED)."""
        reason = ENGINE_REFUSED.get(self.objective.name)
        if reason and self.accelerator.num_processes > 1:
            raise ValueError(f"engine 'accelerate' cannot train {self.objective.name!r}: {reason}; use engine 'manual' "
                             "(the trainer's own broadcast and all-reduce, which trains every objective)")

    def _broadcast_state(self) -> None:
        # under engine "accelerate" the wrapper syncs the net itself (and may have sharded it): only the EMA here
        modules = (self.net, self.ema_net) if self.config.engine == "manual" else (self.ema_net,)
        broadcast_state(modules, self.accelerator.num_processes)

    # ---------------------------------------------------------------- checkpoints

    def _metadata(self) -> dict:
        return {**self.metadata, "format": FORMAT, "step": self.step,
                "objective": self.objective.name, "objective_options": objective_options(self.objective),
                "config": dataclasses.asdict(self.config),
                "precision": self.accelerator.mixed_precision}  # what config.mixed_precision resolved to

    def _frozen_parameters(self) -> set[str]:
        """State-dict names of the net's frozen parameters (e.g. a LoRA run's base network): they are
        the network the run was built on, not state of the run, so checkpoints leave them out (a
        multi-GB base would otherwise be written at every checkpoint); a resumed run takes them from
        the network it is given."""
        return {name for name, p in self.net.named_parameters() if not p.requires_grad}

    def _run_state(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        frozen = self._frozen_parameters()  # the net's state gathered where the engine shards it (sharding.py)
        state = model_state(self.accelerator, self.net, self.engine_net) if module is self.net else module.state_dict()
        return {k: v for k, v in state.items() if k not in frozen}

    def _load_run_state(self, module: torch.nn.Module, state: dict[str, torch.Tensor], path) -> None:
        shapes = shape_mismatches(module, state)
        missing, unexpected = ([], []) if shapes else (load_model_state(self.accelerator, module, state)
                                                       if module is self.net else module.load_state_dict(state, strict=False))
        if shapes or set(missing) - self._frozen_parameters() or unexpected:
            raise CheckpointMismatch(f"{path} does not fit this network: other shapes {shapes[:4]}, missing "
                                     f"{sorted(set(missing) - self._frozen_parameters())[:8]}, unexpected "
                                     f"{sorted(unexpected)[:8]}; use a new output_dir or the same network")

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write net and EMA (without frozen parameters), optimizer state, loss history and metadata
        (main process; atomic)."""
        path = Path(path) if path is not None else self.checkpoint_path
        net_state = self._run_state(self.net)  # on every process: an engine that shards the net gathers it
        opt_state = optimizer_state(self.accelerator, self.net, self.optimizer)  # and the optimizer state
        if self.is_main_process:
            opt_tensors, opt_rest = flatten_optimizer(opt_state)
            tensors = {**prefixed("net", net_state),
                       **(prefixed("ema", self._run_state(self.ema_net)) if self.ema_net is not None else {}),
                       **prefixed("optimizer", opt_tensors),
                       "history.loss": torch.tensor(self.losses, dtype=torch.float32)}
            save_tensors(path, tensors, {**self._metadata(), "optimizer": opt_rest})
        self.accelerator.wait_for_everyone()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by `save_checkpoint` (same objective and network)."""
        tensors, meta = load_tensors(path)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a training checkpoint of this trainer (format "
                             f"{meta.get('format')!r}, expected {FORMAT!r})")
        if meta["objective"] != self.objective.name:
            raise ValueError(f"{path} was trained with objective {meta['objective']!r}, this run uses "
                             f"{self.objective.name!r}: use a new output_dir or the same objective")
        for key, value in self.metadata.items():
            if key in ("family", "start_mode") and key in meta and meta[key] != value:
                raise ValueError(f"{path} has {key}={meta[key]!r}, this run asks for {value!r}: "
                                 "use a new output_dir or the same setting")
        self._load_run_state(self.net, unprefixed("net", tensors), path)
        if self.ema_net is not None:
            ema = unprefixed("ema", tensors)
            self._load_run_state(self.ema_net, ema or unprefixed("net", tensors), path)  # no EMA saved: start it here
        load_optimizer_state(self.accelerator, self.net, self.optimizer,
                             unflatten_optimizer(unprefixed("optimizer", tensors), meta["optimizer"]))
        for group in self.optimizer.optimizer.param_groups:  # this run's settings win
            group.update(lr=self.config.lr, weight_decay=self.config.weight_decay, betas=tuple(self.config.betas))
        self.losses = tensors["history.loss"].tolist()
        self.step = int(meta["step"])
        for key, value in meta.items():
            if key not in RESERVED_METADATA:
                self.metadata.setdefault(key, value)

    def export_weights(self, path: str | Path, ema: bool = True, overwrite: bool = False) -> Path:
        """Write the (EMA) network's weights alone, with the run's metadata, for inference."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True or choose another path")
        if ema and self.ema_net is None:
            raise ValueError("this run keeps no EMA (TrainConfig.ema_decay=None): export with ema=False")
        weights = self.ema_net.state_dict() if ema else model_state(self.accelerator, self.net, self.engine_net)
        self.accelerator.wait_for_everyone()  # every process checked `path` before the main one writes it
        if self.is_main_process:
            save_tensors(path, weights, {**self._metadata(), "weights": "ema" if ema else "raw"})
        self.accelerator.wait_for_everyone()
        return path

    def write_loss_curve(self) -> Path:
        path = self.output_dir / LOSS_CURVE_NAME
        if self.is_main_process and self.losses:
            loss_curve(self.losses, path, title=f"{self.objective.name} loss")
        return path

    # ---------------------------------------------------------------- data

    def _batch_stream(self):
        """Batches from where the run stands (fast-forwarded past those a resumed run consumed)."""
        loader = self.batches
        consumed = self.step * self.config.grad_accumulation
        sized = hasattr(loader, "__len__") and len(loader) > 0
        epoch, skip = divmod(consumed, len(loader)) if sized else (0, consumed)
        while True:
            source = loader
            if skip and hasattr(loader, "skip_batches"):  # a loader prepared by accelerate
                source, skip = self.accelerator.skip_first_batches(loader, skip), 0
            if hasattr(source, "iteration"):  # accelerate seeds the epoch's shuffle with it
                source.iteration = epoch
            empty = True
            for batch in source:
                empty = False
                if skip:
                    skip -= 1
                    continue
                yield batch
            if empty:
                raise ValueError("the batch iterable is empty: give it at least one batch")
            epoch += 1

    # ---------------------------------------------------------------- training

    def _micro_step(self, batch_or_none) -> tuple[torch.Tensor, dict, int]:
        batch = self.batches(self.rng) if batch_or_none is None else batch_or_none
        batch = {k: (v.to(self.accelerator.device) if isinstance(v, torch.Tensor) else v)
                 for k, v in batch.items()}
        with self.accelerator.autocast():
            loss, logs = self.objective(self.engine_net, batch, ema_net=self.ema_net, generator=self.rng)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the {self.objective.name} loss is {loss.item()} at step {self.step}: "
                                     "lower the learning rate or check the data")
        return loss, logs, batch["x0"].shape[0]

    def train(self, on_step: Callable[[int], None] | None = None) -> dict:
        """Train up to config.steps, checkpointing on the way; returns a summary.

        on_step(step) runs before every optimizer step with the number of steps done: to report
        progress, or to stop the run by raising (call `save_checkpoint` to keep the steps done)."""
        with seeded_rng():
            return self._train(on_step)

    def _train(self, on_step) -> dict:
        config, accelerator = self.config, self.accelerator
        synthetic = callable(self.batches) and not hasattr(self.batches, "__iter__")
        stream = None if synthetic else self._batch_stream()
        rank = accelerator.process_index
        bar = tqdm(total=config.steps, initial=self.step, desc=self.objective.name,
                   disable=not (config.progress and self.is_main_process), dynamic_ncols=True)
        samples, started, logs = 0, time.perf_counter(), {}
        start_step = self.step
        self.net.train()
        while self.step < config.steps:
            if on_step is not None:
                on_step(self.step)
            total = torch.zeros((), device=accelerator.device)
            for micro in range(config.grad_accumulation):
                seed = _step_seed(config.seed, rank, self.step * config.grad_accumulation + micro)
                self.rng.manual_seed(seed)
                torch.manual_seed(seed)  # dropout and other global draws resume exactly too
                loss, logs, batch_size = self._micro_step(None if synthetic else next(stream))
                accelerator.backward(loss / config.grad_accumulation)
                total += loss.detach() / config.grad_accumulation
                samples += batch_size * accelerator.num_processes
            if config.engine == "manual":  # the engine's wrapper (DDP, FSDP, DeepSpeed) reduces them itself
                average_gradients(self.net, accelerator.num_processes)
            for group in self.optimizer.param_groups:
                group["lr"] = config.lr_at(self.step)
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(self.net.parameters(), config.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema_net is not None:
                with gathered(accelerator, self.net):  # FSDP2: the full parameters, on every process
                    update_ema(self.ema_net, self.net, config.ema_decay)
            self.step += 1
            self.losses.append(accelerator.reduce(total, "mean").item())

            elapsed = time.perf_counter() - started
            bar.set_postfix(loss=f"{self.losses[-1]:.4g}", samples_per_s=f"{samples / elapsed:.1f}",
                            **{k: f"{v:.3g}" for k, v in logs.items()})
            bar.update(1)
            if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                self.save_checkpoint()
        bar.close()
        if self.step > start_step or not self.checkpoint_path.exists():
            self.save_checkpoint()
        self.write_loss_curve()
        elapsed = time.perf_counter() - started
        return {"step": self.step, "loss": self.losses[-1] if self.losses else math.nan,
                "samples_per_s": samples / elapsed if samples else 0.0, "logs": logs}

