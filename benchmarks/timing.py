"""Wall-clock timing, peak memory and the machine description every benchmark figure carries."""

from __future__ import annotations

import datetime
import gc
import importlib.metadata
import os
import platform
import resource
import statistics
import time

import torch

PACKAGES = ("torch", "diffusers", "numpy", "scikit-image", "scikit-video", "ncnn", "onestep-sr")


def time_runs(fn, repeats: int, warmup: int = 1) -> dict:
    """Wall-clock and CPU seconds (this process, all threads) of `repeats` calls of fn() after
    `warmup` untimed ones: the best of each (least disturbed by other processes on a shared
    machine), the median wall time, every run, and the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    runs, cpu = [], []
    for _ in range(repeats):
        gc.collect()
        started, cpu_started = time.perf_counter(), time.process_time()
        result = fn()
        runs.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    return {"best": min(runs), "median": statistics.median(runs), "cpu_best": min(cpu), "runs": runs,
            "cpu_runs": cpu, "result": result}


def reset_peak_rss() -> bool:
    """Restart this process's peak-RSS count (Linux: write 5 to /proc/self/clear_refs); False if
    the kernel does not allow it, and `peak_rss_bytes` then counts from the process start."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident memory since the process started or `reset_peak_rss` (VmHWM)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info(threads: int) -> dict:
    """Date, machine, load and versions, recorded with every result."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        "cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gib": round(memory / 2**30, 1),
        "torch_threads": threads, "load_average_1min": round(os.getloadavg()[0], 2),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": {package: _version(package) for package in PACKAGES},
    }
