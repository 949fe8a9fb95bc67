"""LoRA fine-tuning of a base network with any objective of training/objectives.py (the realism
adapters); training/adversarial.py adds a discriminator to it.

    trainer = LoRATrainer(base_net, LoraSpec(rank=8), make_objective("perceptual"), batches,
                          TrainConfig(output_dir="runs/realism", steps=300))
    trainer.train()                                   # the project's Trainer: progress, resume, EMA
    trainer.export("realism.safetensors")             # ComfyUI LoRA keys (adapters/lora.py)
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

from torch import nn

from ..adapters.lora import (COMFY_DEFAULT_MODEL_PREFIX, LoraSpec, add_lora, copy_lora_weights, lora_layers, read_lora,
                             save_lora)
from ..files.digest import file_sha256
from .objectives import objective_options
from .sharding import gathered
from .trainer import TrainConfig, Trainer, seeded_rng


class LoRATrainer(Trainer):
    """The project's Trainer on `net` carrying a fresh LoRA of `spec` (its base frozen): the same
    progress, checkpoints, resume, EMA and accelerate support; `export` writes the (EMA) adapter.

    metadata: recorded in checkpoints and in exported LoRA files (base model, data, command).
    initial: a LoRA file of `save_lora` with the same spec to start from instead of a fresh LoRA (training
    an adapter further); a checkpoint in the run's folder still takes precedence when the run resumes.
    Subclasses train a module built around the LoRA network (`trained_module`, `lora_network`).
    """

    def __init__(self, net: nn.Module, spec: LoraSpec, objective, batches, config: TrainConfig,
                 metadata: dict | None = None, initial: str | Path | None = None):
        with seeded_rng(config.seed):  # the LoRA's A (and whatever trained_module adds) start the same every run
            self.add_adapter(net, spec)
            if initial is not None:
                initial_spec, weights, _ = read_lora(initial)
                if (initial_spec.rank, initial_spec.scaling) != (spec.rank, spec.scaling):
                    raise ValueError(f"initial LoRA {initial} has rank {initial_spec.rank} and scaling "
                                     f"{initial_spec.scaling:g}; this run's are {spec.rank} and {spec.scaling:g}: "
                                     "train with the file's --rank and --alpha")
                copy_lora_weights(net, weights, initial)
                metadata = {**(metadata or {}), "initial_lora": Path(initial).name,
                            "initial_lora_sha256": file_sha256(initial)}
            module = self.trained_module(net)
        self.spec = spec
        super().__init__(module, objective, batches, config,
                         metadata={**(metadata or {}), "lora": dataclasses.asdict(spec), **self.recipe_extras()})

    def add_adapter(self, net: nn.Module, spec: LoraSpec) -> None:
        """Inject the fresh adapter into `net` in place (peft's LoRA; adapters/dual_lora.py's for the
        dual-branch trainer)."""
        add_lora(net, spec)

    def has_adapter(self, net: nn.Module) -> bool:
        return bool(lora_layers(net))

    def save_adapter(self, path, source: nn.Module, file_format: str, prefix: str, metadata: dict,
                     overwrite: bool) -> Path:
        return save_lora(path, source, self.spec, file_format=file_format, prefix=prefix, metadata=metadata,
                         overwrite=overwrite)

    def trained_module(self, net: nn.Module) -> nn.Module:
        """The module the trainer optimises, around the LoRA-carrying `net`."""
        return net

    def recipe_extras(self) -> dict:
        """What `trained_module` adds to the recipe."""
        return {}

    def lora_network(self, module: nn.Module) -> nn.Module:
        """The LoRA-carrying network inside a trained module."""
        return module

    @property
    def generator(self) -> nn.Module:
        """The LoRA-carrying network being trained (the SR generator)."""
        return self.lora_network(self.net)

    def recipe(self) -> dict:
        """What made this adapter: objective and its options, training config, step, metadata."""
        return {**self.metadata, "objective": self.objective.name,
                "objective_options": objective_options(self.objective),
                "config": dataclasses.asdict(self.config), "step": self.step}

    def export(self, path: str | Path, file_format: str = "comfy", prefix: str = COMFY_DEFAULT_MODEL_PREFIX,
               ema: bool = True, overwrite: bool = False) -> Path:
        """Write the adapter (the EMA network's by default) with the recipe as metadata."""
        if ema and self.ema_net is None:
            raise ValueError("this run keeps no EMA (TrainConfig.ema_decay=None): export with ema=False")
        source = self.lora_network(self.ema_net if ema else self.net)
        if not self.has_adapter(source):
            raise RuntimeError("the generator lost its LoRA layers")
        # FSDP2: the trained net's full weights, gathered on every process (the EMA copy is never sharded)
        with contextlib.nullcontext() if ema else gathered(self.accelerator, self.net):
            if not self.is_main_process:
                return Path(path)
            return self.save_adapter(path, source, file_format, prefix,
                                     {"recipe": self.recipe(), "weights": "ema" if ema else "raw"}, overwrite)
