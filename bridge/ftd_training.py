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
from .teacher_pairs import existing_pairs_folder, read_pairs
from .training_runs import TRAINING_FOLDER, lora_output_path, lora_spec, train_in_node

NODE = "OneStep SR Train FTD LoRA"


def ftd_batches(z_hr: torch.Tensor, noise: torch.Tensor, z_lr: torch.Tensor, batch_size: int):
    """batches(generator) -> {"x0": z_H, "x1": ε, "lr": z_L, "cond": z_L}: pairs drawn with replacement."""

    def draw(generator: torch.Generator) -> dict:
        index = torch.randint(0, z_hr.shape[0], (batch_size,), generator=generator, device=generator.device).cpu()
        return {"x0": z_hr[index], "x1": noise[index], "lr": z_lr[index], "cond": z_lr[index]}

    return draw


def model_space_pairs(base_model, pairs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z_H, ε, z_L) in the model's own latent space: LATENT samples through process_latent_in, as ComfyUI's
    samplers hand them to the model; the noise is the model's input at sigma 1 as it is."""
    with torch.no_grad():
        return (base_model.process_latent_in(pairs["latent"]), pairs["noise"],
                base_model.process_latent_in(pairs["lr_latent"]))


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
    data = read_pairs(folder)
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
        z_hr, noise, z_lr = model_space_pairs(base_model, data)
        net = NativeFlowNet(base_model, model_conditioning(model, positive, z_hr[:1]))
        unfrozen_inference_weights(diffusion_model)
        trainer = None
        try:
            trainer = LoRATrainer(net, spec, objective, ftd_batches(z_hr, noise, z_lr, batch_size), config,
                                  metadata={"teacher_pairs": folder.name, "pairs": int(z_hr.shape[0]),
                                            "batch": batch_size, "family": "plain",
                                            "base_model": f"{type(base_model).__name__} (ComfyUI MODEL)",
                                            "start_sigma": lr_time, "latent_shape": list(z_hr.shape[1:])})
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
    report = (f"saved {target} ({summary['step']} steps on {z_hr.shape[0]} teacher pairs, last loss "
              f"{summary['loss']:.4g}); run folder {run_dir}; sample it in one step from sigma {lr_time:g} "
              "(start mode lr_at_T, t_start = lr_time)")
    return tuned, plot, report
