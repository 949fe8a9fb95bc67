"""'OneStep SR Teacher Pairs': the user's own native flow model as FTD's teacher (training/ftd_objectives.py),
sampling (noise, image) pairs offline into output/onestep_sr_teacher_pairs/<name>/.

Pair i is what ComfyUI's KSampler makes of the LATENT with seed `seed + i` (the same noise, through
comfy.sample.prepare_noise, and the same comfy.sample.sample call), so a pair can be checked against a
stock KSampler run. Each pair file (pair_000000.safetensors, ...) holds, in ComfyUI's LATENT space:

    noise       the noise KSampler drew (at sigma 1 it is the model's input: x_1 = noise)
    latent      KSampler's output LATENT samples (the teacher's image, z_H after process_latent_in)
    lr_latent   that image decoded, bicubically downscaled by `scale` and enlarged back, encoded (z_L)

The folder is resumable (pairs already written are skipped; each file is written atomically, so an
interrupted run leaves no torn pair) and keeps its settings in settings.json: a rerun with other settings
is refused, naming the inputs that differ, instead of mixing two teachers in one folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths
import torch

from ..files.atomic import atomic_write
from ..files.tensors import load_tensors, read_header, save_tensors
from ..processing.resample import antialiased_bicubic

PAIRS_FOLDER = "onestep_sr_teacher_pairs"  # under ComfyUI's output folder: one folder per name
SETTINGS_FILE = "settings.json"
PAIR_FORMAT = "onestep_sr_teacher_pair_v1"
PAIR_TENSORS = ("noise", "latent", "lr_latent")  # the teacher's noise, its image latent, the LR's latent
NODE = "OneStep SR Teacher Pairs"


def pair_name(index: int) -> str:
    return f"pair_{index:06d}.safetensors"


def plain_name(name: str, what: str = "name") -> str:
    name = name.strip()
    if not name or any(c in name for c in "/\\") or name.startswith(".") or ":" in name:
        raise ValueError(f"{NODE}: {what} must be a plain folder name (no slashes, not starting with a dot), "
                         f"got {name!r}")
    return name


def pairs_folder(name: str) -> Path:
    """output/onestep_sr_teacher_pairs/<name>; the name is a plain folder name, so the path stays inside
    ComfyUI's output folder (a workflow can come from anyone who reaches the server)."""
    base = Path(os.path.abspath(folder_paths.get_output_directory())) / PAIRS_FOLDER
    return base / plain_name(name)


def existing_pairs_folder(name: str) -> Path:
    """A folder of pairs written before, for training; a clear error when there is none."""
    path = pairs_folder(name)
    if not (path / SETTINGS_FILE).is_file():
        raise ValueError(f"{path} holds no teacher pairs (no {SETTINGS_FILE}); run '{NODE}' with name "
                         f"{name.strip()!r} first, or give the name of a folder it wrote")
    return path


def tensor_digest(value) -> str:
    """A short digest of a conditioning (tensors and plain values, nested)."""
    digest = hashlib.sha256()

    def feed(item):
        if isinstance(item, torch.Tensor):
            digest.update(str((item.dtype, tuple(item.shape))).encode())
            digest.update(item.detach().float().cpu().contiguous().numpy().tobytes())
        elif isinstance(item, dict):
            for key in sorted(item):
                digest.update(str(key).encode())
                feed(item[key])
        elif isinstance(item, (list, tuple)):
            for element in item:
                feed(element)
        else:
            digest.update(repr(item).encode())

    feed(value)
    return digest.hexdigest()[:16]


def model_identity(model) -> str:
    """What tells teachers apart without hashing a multi-GB model: its classes, the patches applied (LoRAs) and
    a digest of the first 4096 values of the first, middle and last weights (two checkpoints of one family
    differ there)."""
    patches = sorted(str(key) for key in getattr(model, "patches", {}))
    tensors = list(model.model.diffusion_model.state_dict().items())
    digest = hashlib.sha256("\n".join(patches).encode())
    for name, tensor in [tensors[0], tensors[len(tensors) // 2], tensors[-1]] if tensors else []:
        digest.update(name.encode())
        digest.update(tensor.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return f"{type(model.model).__name__}/{type(model.model.diffusion_model).__name__}/{digest.hexdigest()[:16]}"


def pair_settings(model, vae, positive, negative, latent, seed, steps, cfg, sampler_name, scheduler, scale) -> dict:
    return {"format": PAIR_FORMAT, "model": model_identity(model), "vae": type(vae.first_stage_model).__name__,
            "positive": tensor_digest(positive), "negative": tensor_digest(negative),
            "latent_shape": list(latent["samples"].shape), "seed": seed, "steps": steps, "cfg": cfg,
            "sampler_name": sampler_name, "scheduler": scheduler, "scale": scale}


INPUT_OF_SETTING = {"model": "model", "vae": "vae", "positive": "positive", "negative": "negative",
                    "latent_shape": "latent (its size or batch)", "seed": "seed", "steps": "steps", "cfg": "cfg",
                    "sampler_name": "sampler_name", "scheduler": "scheduler", "scale": "scale", "format": "format"}


def check_settings(folder: Path, settings: dict) -> None:
    """Write settings.json into a new folder; in an existing one, refuse settings that differ."""
    path = folder / SETTINGS_FILE
    if not path.exists():
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(settings, indent=1, sort_keys=True)))
        return
    written = json.loads(path.read_text())
    differ = [key for key in sorted(set(settings) | set(written)) if settings.get(key) != written.get(key)]
    if differ:
        detail = "; ".join(f"{INPUT_OF_SETTING.get(k, k)}: {written.get(k)!r} there, {settings.get(k)!r} now"
                           for k in differ)
        raise ValueError(f"{NODE}: {folder} was written with other settings ({detail}). Pairs of two teachers "
                         "must not mix: set those inputs back to the folder's values to continue it, or choose "
                         "another 'name' for a new folder")


def ksampler_pair(model, positive, negative, latent: dict, seed: int, steps: int, cfg: float, sampler_name: str,
                  scheduler: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise, samples) exactly as nodes.common_ksampler draws and samples them (denoise 1, no mask)."""
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    samples = comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative,
                                  latent_image, denoise=1.0, seed=seed, disable_pbar=True)
    return noise, samples


def lr_latent(vae, samples: torch.Tensor, scale: int) -> torch.Tensor:
    """The teacher's image decoded, downscaled by `scale` (antialiased bicubic), enlarged back (bicubic) and
    encoded: the LR latent the SR LoRA starts from, as the SR workflows make it from an LR photo."""
    image = vae.decode(samples).float()
    if image.ndim == 5:  # video VAEs decode [B, T, H, W, C]
        image = image[:, 0]
    pixels = image[..., :3].movedim(-1, 1).clamp(0, 1)
    height, width = pixels.shape[-2:]
    small = antialiased_bicubic(pixels, (max(1, height // scale), max(1, width // scale)))
    enlarged = torch.nn.functional.interpolate(small, size=(height, width), mode="bicubic", align_corners=False)
    return vae.encode(enlarged.clamp(0, 1).movedim(1, -1))


def teacher_pairs(model, vae, positive, negative, latent: dict, name: str, count: int, seed: int, steps: int,
                  cfg: float, sampler_name: str, scheduler: str, scale: int) -> tuple[str, str]:
    """(the folder's name, a report). Writes pairs 0..count-1 that are missing; see the module docstring."""
    if count < 1 or steps < 1 or scale < 1:
        raise ValueError(f"{NODE}: count, steps and scale must be at least 1, got {count}, {steps}, {scale}")
    if sampler_name not in comfy.samplers.KSampler.SAMPLERS or scheduler not in comfy.samplers.KSampler.SCHEDULERS:
        raise ValueError(f"{NODE}: unknown sampler_name {sampler_name!r} or scheduler {scheduler!r}")
    folder = pairs_folder(name)
    folder.mkdir(parents=True, exist_ok=True)
    settings = pair_settings(model, vae, positive, negative, latent, seed, steps, cfg, sampler_name, scheduler,
                             scale)
    check_settings(folder, settings)
    progress = comfy.utils.ProgressBar(count)
    written = skipped = 0
    for index in range(count):
        path = folder / pair_name(index)
        if path.exists():
            skipped += 1
            progress.update_absolute(index + 1, count)
            continue
        comfy.model_management.throw_exception_if_processing_interrupted()
        noise, samples = ksampler_pair(model, positive, negative, latent, seed + index, steps, cfg, sampler_name,
                                       scheduler)
        low = lr_latent(vae, samples, scale)
        save_tensors(path, dict(zip(PAIR_TENSORS, (noise, samples, low))),
                     {"format": PAIR_FORMAT, "index": index, "seed": seed + index})
        written += 1
        progress.update_absolute(index + 1, count)
    report = (f"{folder}: {count} pairs ({written} written, {skipped} already there); train an FTD LoRA on them "
              f"with 'OneStep SR Train FTD LoRA' (pairs '{folder.name}')")
    return folder.name, report


def pair_files(folder: Path) -> list[Path]:
    """The pair files of a folder, each checked by its header alone (format, tensors, one latent size):
    training reads them a batch at a time (`read_pair_batch`), so a folder never has to fit in memory."""
    files = sorted(folder.glob("pair_*.safetensors"))
    if not files:
        raise ValueError(f"{folder} holds no pair files yet; run '{NODE}' with its name to write them")
    first_shape = None
    for file in files:
        shapes, meta = read_header(file)
        if meta.get("format") != PAIR_FORMAT or set(PAIR_TENSORS) - set(shapes):
            raise ValueError(f"{file} is not a teacher pair written by '{NODE}'; remove it from {folder}")
        first_shape = first_shape or shapes["latent"]
        if shapes["latent"] != first_shape:
            raise ValueError(f"{file} holds a latent of shape {shapes['latent']}, the folder's first pair one of "
                             f"{first_shape}: a folder holds pairs of one size; write the other size under another "
                             "name, or remove the file")
    return files


def read_pair_batch(files: list[Path], indices: list[int]) -> dict[str, torch.Tensor]:
    """Pairs `indices` of `files` stacked on the batch axis (float32): {"noise", "latent", "lr_latent"}."""
    stacks: dict[str, list[torch.Tensor]] = {key: [] for key in PAIR_TENSORS}
    for index in indices:
        tensors, _ = load_tensors(files[index])
        for key in PAIR_TENSORS:
            stacks[key].append(tensors[key].float())
    return {key: torch.cat(values) for key, values in stacks.items()}


# widget specs of the node (ComfyUI's own sampler and scheduler lists)
SAMPLER_NAME = (comfy.samplers.KSampler.SAMPLERS, {"default": "euler", "tooltip": "The teacher's sampler (as KSampler)."})
SCHEDULER = (comfy.samplers.KSampler.SCHEDULERS, {"default": "simple", "tooltip": "The teacher's scheduler (as KSampler)."})
