"""'Train SR LoRA' runs: HR images from an IMAGE batch or a folder, the adversarial LoRA trainer on the
default model (a copy of its network, pixel space) or on a native flow MODEL (bridge/native_training.py),
progress and interrupt through ComfyUI, the LoRA saved into models/loras/."""

from __future__ import annotations

import contextlib
import hashlib
import os
from functools import partial
from pathlib import Path

import comfy.model_management
import comfy.pixel_space_convert
import comfy.sd
import comfy.utils
import folder_paths
import torch

from ..adapters.lora import COMFY_DEFAULT_MODEL_PREFIX, DEFAULT_TARGETS, NATIVE_TARGETS, LoraSpec
from ..models.flow_map_sr import FlowMapSRNet
from ..files.images import IMAGE_SUFFIXES, image_files, read_image
from ..processing.images import bchw_to_bhwc, check_image, split_alpha, to_rgb
from ..training.adversarial import DEFAULT_CONSISTENCY, AdversarialLoRA, AdversarialLoRATrainer
from ..training.checkpoint import CheckpointMismatch
from ..training.objectives import OBJECTIVES
from ..training.sr_data import ImageCrops, sr_batches
from ..training.trainer import LOSS_CURVE_NAME, TrainConfig
from .adapter_loading import LORA_FOLDER, load_sr_adapter
from .default_model import is_default_model
from .model_info import model_info
from .dual_branch import is_dual_patched, modulation_layers
from .dual_branch_lora import trains_dual_branch_lora
from .native_training import CONSISTENCY, DUAL_CONSISTENCY, DUAL_EXTRA_TARGETS, LORA_KEY_PREFIX, native_lora_trainer

TRAINING_FOLDER = "onestep_sr_training"  # under ComfyUI's output folder: one run folder per LoRA name


def input_folder(folder: str) -> Path:
    """The folder named by the `folder` widget: relative to ComfyUI's input folder, or absolute inside it.

    A workflow can come from anyone who reaches the server, so it reads only under the input folder
    (as ComfyUI's own loaders do: `..` is resolved, links the server's owner put there are followed)."""
    base = os.path.abspath(folder_paths.get_input_directory())
    path = os.path.abspath(os.path.join(base, folder))
    if os.path.commonpath([base, path]) != base:
        raise ValueError(f"Train SR LoRA: folder {folder!r} is outside ComfyUI's input folder {base}; put the HR "
                         "images in a folder there (or link one into it) and give its name relative to it")
    if not os.path.isdir(path):
        raise ValueError(f"Train SR LoRA: folder {path} does not exist; give a folder of HR images under "
                         f"ComfyUI's input folder {base}")
    return Path(path)


def hr_images(images: torch.Tensor | None, folder: str, crop_size: int) -> list[torch.Tensor]:
    """[3, H, W] tensors in [0, 1] from an IMAGE batch (grey expanded, alpha dropped) and/or a folder under
    ComfyUI's input; images smaller than `crop_size` are named before any training."""
    named = []
    if images is not None:
        check_image(images, "images")
        colour = to_rgb(split_alpha(images)[0])
        named += [(f"the IMAGE batch ({images.shape[2]}x{images.shape[1]})", image.permute(2, 0, 1).float())
                  for image in colour]
    if folder.strip():
        path = input_folder(folder.strip())
        files = image_files(path)
        if not files:
            raise ValueError(f"Train SR LoRA: {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        for file in files:
            image = read_image(file, rgb=True)[0]
            named.append((f"{file.name} ({image.shape[2]}x{image.shape[1]})", image))
    if not named:
        raise ValueError("Train SR LoRA: connect an IMAGE batch of HR images or name a folder of them")
    small = sorted({name for name, image in named if min(image.shape[-2:]) < crop_size})
    if small:
        smallest = min(min(image.shape[-2:]) for _, image in named)
        raise ValueError(f"Train SR LoRA: {len(small)} HR image(s) are smaller than crop_size {crop_size}: "
                         f"{', '.join(small[:5])}; lower crop_size to {smallest} or leave them out")
    return [image for _, image in named]


def lora_output_path(name: str, overwrite: bool) -> Path:
    """models/loras/<name>.safetensors; an existing file is kept unless `overwrite`."""
    name = name.strip().removesuffix(".safetensors")
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"Train SR LoRA: lora_name must be a plain file name, got {name!r}")
    path = Path(folder_paths.get_folder_paths(LORA_FOLDER)[0]) / f"{name}.safetensors"
    if path.exists() and not overwrite:
        raise FileExistsError(f"Train SR LoRA: {path} exists; choose another lora_name or switch overwrite on")
    return path


def trainable_network(model, vae):
    """A plain-torch float32 copy of the MODEL's OneStep SR network, with the MODEL's own patches applied,
    to train on (the MODEL's layers are ComfyUI's inference operations)."""
    if not isinstance(vae.first_stage_model, comfy.pixel_space_convert.PixelspaceConversionVAE):
        raise ValueError("Train SR LoRA: the OneStep SR default model works in pixel space; connect the VAE that "
                         "'Load OneStep SR Model' returns")
    comfy.model_management.load_models_gpu([model])
    loaded = model.model.diffusion_model.net
    net = FlowMapSRNet(**loaded.config)
    net.load_state_dict({key: value.float().cpu() for key, value in loaded.state_dict().items()})
    return net.train()


def state_sha256(net) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def default_model_trainer(model, vae, crops, spec, objective, config, batch_size, crop_size, scale,
                          real_degradation, discriminator, metadata):
    """The AdversarialLoRATrainer on a copy of the default model's network (pixel space)."""
    net = trainable_network(model, vae)
    probe = (torch.zeros(1, 3, crop_size, crop_size), torch.zeros(1, 3, crop_size, crop_size))
    yield AdversarialLoRATrainer(
        net, spec, objective,
        sr_batches(crops, batch_size, crop_size, real_degradation, net.source_noise, scales=(scale,)), config,
        probe=probe, discriminator=discriminator,
        metadata={**metadata, "family": net.family, "base_model": "OneStep SR default model (ComfyUI MODEL)",
                  "base_model_state_sha256": state_sha256(net)})


def lora_spec(model, rank: int, alpha: float, target_modules: str) -> LoraSpec:
    """The node's LoRA widgets as a LoraSpec: alpha 0 means alpha = rank; target_modules is a comma-separated
    list of module-name suffixes, empty for the model's defaults."""
    targets = tuple(name.strip() for name in target_modules.split(",") if name.strip())
    if not targets:
        targets = DEFAULT_TARGETS if is_default_model(model) else NATIVE_TARGETS
        if is_dual_patched(model):
            targets += DUAL_EXTRA_TARGETS + modulation_layers(model.get_model_object("diffusion_model"))
    return LoraSpec(rank=rank, alpha=alpha or None, target_modules=targets)


def default_model_consistency(model) -> str:
    """The consistency objective a LoRA of the default model trains with: the model's own training objective,
    less its perceptual term if it has one. ST-LPIPS is a training extra that requirements.txt does not
    install; the node's realism comes from its adversarial term."""
    name = model_info(model).objective or DEFAULT_CONSISTENCY
    return getattr(OBJECTIVES.get(name), "fidelity_part", name)


@contextlib.contextmanager
def resumable_run(node: str, run_dir: Path):
    """A run folder holding another setup's checkpoint (an earlier run under the same lora_name with another
    rank, alpha, target_modules or model) is refused naming the node's fix."""
    try:
        yield
    except CheckpointMismatch as error:
        raise ValueError(f"{node}: {run_dir} holds the checkpoint of an earlier run under this lora_name with other "
                         "settings (rank, alpha, target_modules, or another model or patch), and a run resumes only "
                         f"with the same ones: choose another lora_name, or delete that folder to start over ({error})"
                         ) from None


def train_in_node(trainer, steps: int) -> dict:
    """trainer.train with ComfyUI's progress bar and interrupt button. An interrupted run saves the steps done
    so far as a checkpoint (the same lora_name resumes from there) and re-raises."""
    progress = comfy.utils.ProgressBar(steps)

    def on_step(done: int) -> None:
        progress.update_absolute(done, steps)
        comfy.model_management.throw_exception_if_processing_interrupted()

    try:
        summary = trainer.train(on_step)
    except comfy.model_management.InterruptProcessingException:
        trainer.save_checkpoint()
        raise
    progress.update_absolute(steps, steps)
    return summary


def train_sr_lora(model, vae, lora_name: str, steps: int, batch_size: int, crop_size: int, scale: int, rank: int,
                  learning_rate: float, adversarial_weight: float, discriminator: str, seed: int,
                  overwrite: bool = False, images=None, folder: str = "", real_degradation: float = 0.2,
                  positive=None, alpha: float = 0.0, target_modules: str = ""):
    """(MODEL with the trained LoRA, loss plot IMAGE, report). The run (checkpoints every tenth of
    the steps) lives in output/onestep_sr_training/<lora_name>/: an interrupted run keeps its last
    checkpoint and the same lora_name resumes it.

    The OneStep SR default model trains on a copy of its network in pixel space (flow-map consistency,
    an EMA); a native flow MODEL (FLUX, SD3, ...; bridge/native_training.py) in its latent space with the
    LoRA in its own diffusion model while it trains (flow-matching consistency, no EMA), with `positive`
    as its text conditioning; a MODEL through the dual-branch patch with TEASR's any-step objective
    (trajectory endpoint + self-adversarial distillation with timestep-aware rectification) as its
    consistency term, its LoRA on the modulation layers too, a dual-branch LoRA (bridge/dual_branch_lora.py,
    FLUX, SD3, Qwen-Image and Lumina 2; the returned MODEL carries it through Load SR Adapter)."""
    if crop_size % scale:
        raise ValueError(f"Train SR LoRA: crop_size {crop_size} must be a multiple of scale {scale}")
    target = lora_output_path(lora_name, overwrite)
    crops = ImageCrops(hr_images(images, folder, crop_size))
    spec = lora_spec(model, rank, alpha, target_modules)
    native = not is_default_model(model)
    run_dir = Path(folder_paths.get_output_directory()) / TRAINING_FOLDER / target.stem
    config = TrainConfig(output_dir=str(run_dir), steps=steps, seed=seed, lr=learning_rate,
                         ema_decay=None if native else 0.99, checkpoint_every=max(1, steps // 10), progress=False)
    dual = is_dual_patched(model)  # TEASR's any-step objective at full weight (bridge/dual_branch.py)
    objective = AdversarialLoRA(adversarial_weight=adversarial_weight, consistency_weight=1.0 if dual else 0.25,
                                consistency=DUAL_CONSISTENCY if dual else CONSISTENCY if native
                                else default_model_consistency(model))
    metadata = {"hr_images": len(crops.images), "batch": batch_size, "crop": crop_size, "scale": scale,
                "real_fraction": real_degradation}
    make_trainer = (partial(native_lora_trainer, model, vae, positive) if native
                    else partial(default_model_trainer, model, vae))
    # ComfyUI runs nodes under torch.inference_mode, in which nothing can be trained.
    with torch.inference_mode(False), resumable_run("Train SR LoRA", run_dir), make_trainer(
            crops, spec, objective, config, batch_size, crop_size, scale, real_degradation, discriminator,
            metadata) as trainer:
        summary = train_in_node(trainer, steps)
        # the adapter as trained (an EMA lags in short runs)
        trainer.export(target, prefix=LORA_KEY_PREFIX if native else COMFY_DEFAULT_MODEL_PREFIX, ema=False,
                       overwrite=overwrite)
    folder_paths.filename_list_cache.pop(LORA_FOLDER, None)
    plot = bchw_to_bhwc(read_image(run_dir / LOSS_CURVE_NAME, rgb=True))
    if native and trains_dual_branch_lora(model):  # a dual-branch LoRA: Load SR Adapter reads it, stock loaders do not
        tuned, _, _ = load_sr_adapter(model, str(target))
        how = ("a dual-branch LoRA (noise / condition branches): load it with 'Load SR Adapter' onto the MODEL "
               "through the Dual-Branch Patch ('Load LoRA' does not read it)")
    else:
        lora = comfy.utils.load_torch_file(str(target), safe_load=True)
        tuned, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
        how = "load it with 'Load LoRA' or 'Load SR Adapter'"
    report = (f"saved {target} ({summary['step']} steps, last loss {summary['loss']:.4g}); run folder {run_dir}; "
              f"{how}")
    return tuned, plot, report
