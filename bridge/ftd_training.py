"""'OneStep SR Train FTD LoRA': an SR LoRA trained with FluxSR's flow trajectory distillation
(training/ftd_objectives.py) on a native flow MODEL, from the teacher pairs a folder of
output/onestep_sr_teacher_pairs/ holds (bridge/teacher_pairs.py).

The LoRA lives in the MODEL's own diffusion model only while it trains (bridge/native_training.py): no
teacher network and no discriminator are held, the teacher being the pairs on disk. The run folder is
output/onestep_sr_training/<lora_name>/ (checkpoints every tenth of the steps; the same name resumes), the
LoRA is saved into models/loras/ and the MODEL comes back with it applied by ComfyUI's stock LoRA loader.
"""

from __future__ import annotations

from pathlib import Path

import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths
import torch

from ..adapters.lora import lora_layers, remove_lora
from ..files.images import read_image
from ..processing.images import bchw_to_bhwc
from ..training.checkpointing import release_blocks
from ..training.ftd_objectives import FlowTrajectoryDistillation
from ..training.lora_training import LoRATrainer
from ..training.trainer import LOSS_CURVE_NAME, TrainConfig
from .adapter_loading import LORA_FOLDER
from .native_training import (LORA_KEY_PREFIX, NativeFlowNet, check_flow_sampling, model_conditioning,
                              unfrozen_inference_weights)
from .teacher_pairs import existing_pairs_folder, pair_files, read_pair_batch
from .training_runs import TRAINING_FOLDER, lora_output_path, lora_spec, resumable_run, train_in_node

NODE = "OneStep SR Train FTD LoRA"


def ftd_batches(base_model, files: list[Path], batch_size: int):
    """batches(generator) -> {"x0": z_H, "x1": ε, "lr": z_L, "cond": z_L}: pairs drawn with replacement, read
    from disk per batch. Latents go through process_latent_in into the model's space, as ComfyUI's samplers
    hand LATENT samples to the model; the noise is the model's input at sigma 1 as it is."""

    def draw(generator: torch.Generator) -> dict:
        index = torch.randint(0, len(files), (batch_size,), generator=generator, device=generator.device).cpu()
        pairs = read_pair_batch(files, index.tolist())
        with torch.no_grad():
            z_lr = base_model.process_latent_in(pairs["lr_latent"])
            return {"x0": base_model.process_latent_in(pairs["latent"]), "x1": pairs["noise"], "lr": z_lr,
                    "cond": z_lr}

    return draw


def train_ftd_lora(model, pairs: str, lora_name: str, steps: int, batch_size: int, rank: int, learning_rate: float,
                   lr_time: float, sign: int | str, diversification_weight: float, seed: int, overwrite: bool = False,
                   positive=None, alpha: float = 0.0, target_modules: str = "",
                   diversification_blocks: str = "double_blocks.0,single_blocks.0", lr_fraction: float = 0.5,
                   gradient_checkpointing: bool = False):
    """(MODEL with the trained LoRA, loss plot IMAGE, report)."""
    check_flow_sampling(model)
    sign = int(sign)  # the node's "+1" / "-1"
    target = lora_output_path(lora_name, overwrite)
    folder = existing_pairs_folder(pairs)
    objective = FlowTrajectoryDistillation(lr_time=lr_time, sign=sign, lr_fraction=lr_fraction,
                                           diversification_weight=diversification_weight,
                                           diversification_blocks=diversification_blocks)
    spec = lora_spec(model, rank, alpha, target_modules)
    files = pair_files(folder)
    run_dir = Path(folder_paths.get_output_directory()) / TRAINING_FOLDER / target.stem
    config = TrainConfig(output_dir=str(run_dir), steps=steps, seed=seed, lr=learning_rate, ema_decay=None,
                         checkpoint_every=max(1, steps // 10), progress=False,
                         gradient_checkpointing="auto" if gradient_checkpointing else "")
    comfy.model_management.load_models_gpu([model])
    base_model = model.model
    diffusion_model = base_model.diffusion_model
    was_training = diffusion_model.training
    # ComfyUI runs nodes under torch.inference_mode, in which nothing can be trained.
    with torch.inference_mode(False):
        batches = ftd_batches(base_model, files, batch_size)
        probe = read_pair_batch(files, [0])["latent"]
        net = NativeFlowNet(base_model, model_conditioning(model, positive, probe))
        unfrozen_inference_weights(diffusion_model)
        trainer = None
        try:
            with resumable_run(NODE, run_dir):
                trainer = LoRATrainer(net, spec, objective, batches, config,
                                      metadata={"teacher_pairs": folder.name, "pairs": len(files),
                                                "batch": batch_size, "family": "plain",
                                                "base_model": f"{type(base_model).__name__} (ComfyUI MODEL)",
                                                "start_sigma": lr_time, "latent_shape": list(probe.shape[1:])})
            summary = train_in_node(trainer, steps)
            trainer.export(target, prefix=LORA_KEY_PREFIX, ema=False, overwrite=overwrite)
        finally:
            if trainer is not None:  # the MODEL's blocks get their own forward back
                release_blocks(trainer.checkpointed_blocks)
            if lora_layers(net):
                remove_lora(net)
            diffusion_model.train(was_training)
    folder_paths.filename_list_cache.pop(LORA_FOLDER, None)
    plot = bchw_to_bhwc(read_image(run_dir / LOSS_CURVE_NAME, rgb=True))
    lora = comfy.utils.load_torch_file(str(target), safe_load=True)
    tuned, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    report = (f"saved {target} ({summary['step']} steps on {len(files)} teacher pairs, last loss "
              f"{summary['loss']:.4g}); run folder {run_dir}; sample it in one step from sigma {lr_time:g} "
              "(start mode lr_at_T, t_start = lr_time)")
    return tuned, plot, report
