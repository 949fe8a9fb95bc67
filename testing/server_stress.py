"""Load and faults on a real ComfyUI server (issue 15), for tests/test_server_stress.py and benchmarks/robustness.py.

- `load`: prompts of mixed sizes queued at once all complete; the server's peak RSS after the last is compared
  with its peak after the second (the ProbePeakRSS node reads it inside the server, race-free); no temporary
  file is left (the server's TMPDIR, its temp folder, any `.tmp`).
- `interrupt_upscales`: a tiled upscale interrupted at random moments of its run; the next prompt succeeds and
  an interrupted prompt saves nothing.
- `interrupt_trainings`: Train SR LoRA interrupted at random moments; the run keeps its last checkpoint, and
  running it again resumes from that checkpoint (its loss history is marked, and the mark is found in the
  finished run's history) and finishes.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from ..files.tensors import decoded, read_metadata, read_tensor_file, save_tensors
from . import comfy_host as host_lib
from .bad_inputs import train_prompt, upscale_prompt

# Mixed sizes (width, height, scale_by), largest first: the second prompt has met the largest allocations.
LOAD_SIZES = ((96, 80, 4.0), (40, 48, 2.0), (64, 64, 4.0), (16, 16, 2.0), (24, 40, 4.0))
TILED_UPSCALE = {"image": {"width": 40, "height": 48}, "scale_by": 16.0, "tile_size": 128}  # 640x768, ~120 tiles
TRAINING = {"images": {"width": 48, "height": 48}, "steps": 30, "batch_size": 2, "crop_size": 32}
RESUME_MARK = -1.0  # written over an interrupted run's loss history: only a resumed run carries it on


def probed(prompt: dict, node_class: str = "OneStepSR_Upscale") -> dict:
    """`prompt` with a ProbePeakRSS node reading the output of its `node_class` node."""
    [node_id] = [key for key, node in prompt.items() if node["class_type"] == node_class]
    return {**prompt, "probe": {"class_type": "ProbePeakRSS", "inputs": {"image": [node_id, 0]}}}


def stray_files(server) -> list[str]:
    """Temporary files the server left: anything in its TMPDIR or temp folder, and `.tmp` files anywhere."""
    base = Path(server.base)
    found = [path for folder in (base / "tmpdir", base / "temp") if folder.is_dir() for path in folder.rglob("*")
             if path.is_file()]
    return sorted(str(path.relative_to(base)) for path in {*found, *base.rglob("*.tmp")})


def start_server(comfy_dir, base: Path, **kwargs):
    """A ComfyServer on `base` whose TMPDIR is base/tmpdir (so temporary files it leaves can be counted)."""
    (base / "tmpdir").mkdir(parents=True, exist_ok=True)
    return host_lib.ComfyServer(comfy_dir, base, env={"TMPDIR": str(base / "tmpdir")}, **kwargs)


def load(server, prompts: int = 50) -> dict:
    ids = []
    for index in range(prompts):
        width, height, scale = LOAD_SIZES[index % len(LOAD_SIZES)]
        prompt = upscale_prompt({"width": width, "height": height, "seed": index}, scale_by=scale,
                                prefix=f"load_{index:02d}")
        ids.append(server.queue_prompt(probed(prompt)))
    entries = [server.wait_history(prompt_id, timeout=600) for prompt_id in ids]
    completed = [entry for entry in entries if entry["status"]["status_str"] == "success"]
    peaks = [entry["outputs"]["probe"]["peak_rss_kb"][0] if entry in completed else None for entry in entries]
    after_second, after_last = peaks[1], peaks[-1]
    return {"prompts": prompts, "completed": len(completed),
            "errors": [host_lib.history_error(entry) for entry in entries if entry not in completed][:3],
            "peak_rss_after_second_mb": after_second and after_second / 1024,
            "peak_rss_after_last_mb": after_last and after_last / 1024,
            "peak_rss_growth": after_last / after_second - 1 if after_second and after_last else None,
            "stray_files": stray_files(server)}


def wait_running(server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not server.get_json("/queue")["queue_running"]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the prompt did not start within {timeout:.0f} s:\n{server.log_tail()}")
        time.sleep(0.01)


def interrupted(entry) -> bool:
    return any(event == "execution_interrupted" for event, _ in entry["status"]["messages"])


def running_time(server, prompt: dict) -> float:
    """Seconds `prompt` runs, from the moment the queue starts it until its /history entry (it must succeed)."""
    prompt_id = server.queue_prompt(prompt)
    wait_running(server)
    started = time.monotonic()
    entry = server.wait_history(prompt_id, timeout=600)
    assert entry["status"]["status_str"] == "success", host_lib.failure_report(entry)
    return time.monotonic() - started


def interrupt_at(server, prompt: dict, delay: float) -> dict:
    """Queue `prompt`, interrupt it `delay` seconds after it starts running; its /history entry."""
    prompt_id = server.queue_prompt(prompt)
    wait_running(server)
    time.sleep(delay)
    server.post_json("/interrupt", {})
    return server.wait_history(prompt_id, timeout=600)


def next_prompt_succeeds(server, seed: int) -> bool:
    entry = server.run(upscale_prompt({"width": 8, "height": 8, "seed": seed}, prefix="after_fault"))
    return entry["status"]["status_str"] == "success"


def moments(points: int, duration: float, seed: int):
    """(try, delay) pairs: delays drawn uniformly over `duration` until the caller has landed `points` interrupts
    (the caller stops there); a moment after the run has finished lands none: at most 2 * points tries."""
    rng = random.Random(seed)
    for attempt in range(2 * points):
        yield attempt, rng.uniform(0.0, duration)


def interrupt_upscales(server, points: int = 20, seed: int = 0) -> dict:
    """Interrupt a tiled upscale at `points` moments drawn uniformly over its uninterrupted run time."""
    duration = running_time(server, upscale_prompt(**TILED_UPSCALE, prefix="tiled_full"))
    results = []
    for point, delay in moments(points, duration, seed):
        if sum(r["interrupted"] for r in results) == points:
            break
        prefix = f"tiled_cut_{point:02d}"
        entry = interrupt_at(server, upscale_prompt(**{**TILED_UPSCALE, "seed": point + 1}, prefix=prefix), delay)
        saved = sorted(path.name for path in (Path(server.base) / "output").glob(f"{prefix}*"))
        results.append({"delay_s": round(delay, 3), "interrupted": interrupted(entry),
                        "finished_first": entry["status"]["status_str"] == "success",
                        "saved_when_interrupted": saved if interrupted(entry) else [],
                        "next_prompt_succeeds": next_prompt_succeeds(server, point)})
    return {"points": points, "tries": len(results), "run_s": round(duration, 2), "results": results,
            "interrupted": sum(r["interrupted"] for r in results),
            "next_prompt_succeeded": sum(r["next_prompt_succeeds"] for r in results),
            "partial_outputs": sum(bool(r["saved_when_interrupted"]) for r in results),
            "stray_files": stray_files(server)}


def mark_history(checkpoint: Path) -> int:
    """Overwrite the checkpoint's loss history with RESUME_MARK (as an atomic rewrite); its step count."""
    tensors, raw = read_tensor_file(checkpoint)
    metadata = decoded(raw)
    tensors["history.loss"] = torch.full_like(tensors["history.loss"], RESUME_MARK)
    save_tensors(checkpoint, tensors, metadata)
    return int(metadata["step"])


def interrupt_trainings(server, points: int = 20, seed: int = 0) -> dict:
    """Interrupt Train SR LoRA at `points` moments over its run time; check the checkpoint; resume to the end."""
    base = Path(server.base)
    server.run(train_prompt(**TRAINING, lora_name="fault_warm_up"), timeout=600)  # the model loaded, as later
    duration = running_time(server, train_prompt(**TRAINING, lora_name="fault_full"))
    results = []
    for point, delay in moments(points, duration, seed):
        if sum(r["interrupted"] for r in results) == points:
            break
        name = f"fault_{point:02d}"
        entry = interrupt_at(server, train_prompt(**TRAINING, lora_name=name), delay)
        run = base / "output" / "onestep_sr_training" / name
        checkpoint = run / "checkpoint.safetensors"
        result = {"delay_s": round(delay, 3), "interrupted": interrupted(entry),
                  "finished_first": entry["status"]["status_str"] == "success",
                  "lora_written_when_interrupted": interrupted(entry) and (base / "models" / "loras" /
                                                                         f"{name}.safetensors").exists(),
                  "checkpoint_step": None, "resumed_from_it": None}
        if interrupted(entry) and checkpoint.exists():
            result["checkpoint_step"] = mark_history(checkpoint)  # readable: the last good checkpoint
        result["next_prompt_succeeds"] = next_prompt_succeeds(server, point)
        if interrupted(entry):
            again = server.run(train_prompt(**TRAINING, lora_name=name), timeout=600)
            finished = again["status"]["status_str"] == "success"
            history = read_tensor_file(checkpoint)[0]["history.loss"].tolist() if finished else []
            step = result["checkpoint_step"] or 0
            result["resumed_from_it"] = (finished and read_metadata(checkpoint)["step"] == TRAINING["steps"]
                                         and history[:step] == [RESUME_MARK] * step
                                         and RESUME_MARK not in history[step:])
            result["finished_after_resume"] = finished
        results.append(result)
    cut = [r for r in results if r["interrupted"]]
    return {"points": points, "tries": len(results), "run_s": round(duration, 2), "steps": TRAINING["steps"],
            "results": results,
            "interrupted": len(cut), "with_checkpoint": sum(r["checkpoint_step"] is not None for r in cut),
            "resumed_from_checkpoint": sum(bool(r["resumed_from_it"]) for r in cut),
            "lora_written_when_interrupted": sum(bool(r["lora_written_when_interrupted"]) for r in cut),
            "next_prompt_succeeded": sum(r["next_prompt_succeeds"] for r in results),
            "stray_files": stray_files(server)}
