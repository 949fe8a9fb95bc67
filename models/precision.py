"""Which device the default model runs on, and which precision it computes in there.

Devices: `resolve_device("auto")` takes a CUDA GPU, then Apple's MPS, then the CPU; a device asked for by
name and absent is refused with the fix. Under a launcher of several processes (accelerate, torchrun),
process LOCAL_RANK takes CUDA GPU LOCAL_RANK.

Precision: `auto` picks half precision where the device computes it natively, else float32:
- a CUDA GPU with bf16 (Ampere and later) runs bf16; an older one with fp16 tensor cores (Volta,
  Turing: compute capability 7) runs fp16; earlier GPUs compute fp16 at a fraction of the fp32 rate;
- Apple GPUs (MPS) compute fp16 natively (bf16 they emulate on M1/M2);
- a CPU with AVX512-BF16 or AMX (Intel Sapphire Rapids and later, AMD Zen 4 and later): oneDNN runs the
  network's bf16 convolutions about twice as fast as float32 (measured on 2 Zen 4 cores: a x4 upscale to
  1024^2 0.51 -> 0.24 s, a default-model training step 0.21 -> 0.10 s); on other CPUs bf16 is emulated
  and slower, so `auto` keeps float32.
The weights stay float32 and autocast casts per operation, so the same file serves every precision.
"""

from __future__ import annotations

import contextlib

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
# The first CUDA compute capability with fp16 tensor cores (Volta).
FP16_TENSOR_CORES = 7


def native_bf16(device_type: str) -> bool:
    """Whether `device_type` ("cuda", "cpu", ...) computes bf16 natively."""
    import torch  # here, not at the top: the CLI reads PRECISIONS before it imports torch

    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    # torch exposes these CPU feature checks only privately; without them, assume neither
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def native_half(device_type: str) -> str | None:
    """The half precision ("bf16" or "fp16") `device_type` computes natively, or None."""
    import torch

    if native_bf16(device_type):
        return "bf16"
    if device_type == "mps":
        return "fp16"
    if device_type == "cuda" and torch.cuda.is_available():
        return "fp16" if torch.cuda.get_device_capability()[0] >= FP16_TENSOR_CORES else None
    return None


def resolve_precision(precision: str, device_type: str) -> str:
    """`precision` of PRECISIONS -> "fp32", "bf16" or "fp16" for a device of `device_type`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return native_half(device_type) or "fp32"
    return precision


def autocast(precision: str, device_type: str):
    """The context the network runs in for `precision` (see `resolve_precision`)."""
    half = resolve_precision(precision, device_type)
    if half == "fp32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type, dtype=torch.bfloat16 if half == "bf16" else torch.float16)


def mps_available() -> bool:
    import torch

    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: str, local_rank: int = 0):
    """The torch.device for `name` of DEVICES; raises ValueError naming the fix when it is absent.
    `local_rank` (a launcher's LOCAL_RANK) picks the CUDA GPU, wrapping when there are fewer GPUs."""
    import torch

    if name not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(f"no CUDA GPU is visible to torch {torch.__version__} ({build}); use auto or cpu, or "
                             "install a CUDA build of torch and check CUDA_VISIBLE_DEVICES and the driver")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "mps" and not mps_available():
        raise ValueError("Apple's MPS is not available to this torch (it needs an Apple Silicon Mac, macOS 12.3 or "
                         "later and an arm64 Python); use auto or cpu")
    return torch.device(name)
