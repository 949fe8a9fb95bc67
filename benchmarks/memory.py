"""Peak training memory of an SR LoRA: TEASR's self-adversarial training (the student alone: no teacher, no
discriminator) against teacher + student + discriminator training of the same student, on tiny FLUX and tiny
Qwen-Image built from ComfyUI's own classes (testing/tiny_models.py), and what that predicts at full size.

    python benchmarks/memory.py [--threads 2]     # writes benchmarks/results/memory.json and memory.md

Method: testing/memory.py's TensorMemory, a TorchDispatchMode that sees every tensor an operation makes
(forward, backward, optimizer step) and counts live storage bytes exactly, the CPU included, where torch keeps
no allocator statistics, tracemalloc does not see torch's buffers and peak RSS is dominated by the libraries
(hundreds of MiB) against a tiny model's few MiB. What is measured is a steady-state optimizer step (the
second: AdamW's state exists): weights, buffers and optimizer state held (static) plus the highest live total
of gradients, activations and temporaries during the step.

Both configurations train the same student (the tiny model with a rank-4 LoRA on the native targets, through
the NativeFlowNet the Train SR LoRA node uses) on the same batch:
  self_adversarial   training/realism_objectives.SelfAdversarial on the student alone;
  teacher_student_d  a frozen teacher (a second copy of the base, as distillation recipes that hold one do),
                     the student matching its velocity plus an L1 reconstruction, and a PatchGAN discriminator
                     on the latents trained on the same step (training/discriminators.py).
The full-size prediction takes exact parameter counts of FLUX.1 and Qwen-Image built on the meta device from
ComfyUI's classes (no weights), see `predict`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from timing import machine_info  # noqa: E402

from onestep_sr.testing.memory import MIB, TensorMemory, module_bytes  # noqa: E402

RESULTS = HERE / "results"
GIB = 2 ** 30
LORA_RANK = 4
PREDICTED_RANK = 16
LATENT_SIDE = 16
BYTES_PER_WEIGHT = {"bf16": 2, "fp8": 1}
TRAINED_BYTES_PER_PARAM = 16  # float32 LoRA weight + gradient + AdamW's two moments


def optimizer_tensors(optimizer) -> list[torch.Tensor]:
    return [value for state in optimizer.state.values() for value in state.values() if isinstance(value, torch.Tensor)]


def measure_step(modules: dict, parameters, step) -> dict:
    """Bytes of one steady-state optimizer step: `step(optimizer)` runs once unmeasured (AdamW creates its
    state), then once under TensorMemory with everything that exists before it registered as static."""
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    step(optimizer)
    optimizer.zero_grad(set_to_none=True)
    held = [t for module in modules.values() for t in [*module.parameters(), *module.buffers()]]
    state = optimizer_tensors(optimizer)
    with TensorMemory(static=held + state) as memory:
        step(optimizer)
    optimizer.zero_grad(set_to_none=True)
    return {"weights_mib": {name: module_bytes(module) / MIB for name, module in modules.items()},
            "optimizer_state_mib": sum(t.numel() * t.element_size() for t in state) / MIB,
            "static_mib": memory.static_bytes / MIB, "step_peak_mib": memory.dynamic_peak / MIB,
            "peak_mib": memory.peak_bytes / MIB}


def family_latent(family: str, side: int) -> torch.Tensor:
    shape = (1, 16, 1, side, side) if family == "qwen_image" else (1, 16, side, side)
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def planar(x: torch.Tensor) -> torch.Tensor:
    """Qwen-Image's [B, C, 1, H, W] latents as [B, C, H, W] for the 2-D PatchGAN."""
    return x.flatten(1, 2) if x.ndim == 5 else x


def configurations(family: str, host) -> dict:
    """{configuration: measure_step result} for one tiny family."""
    import comfy.model_management

    from onestep_sr.adapters.lora import NATIVE_TARGETS, LoraSpec, add_lora, remove_lora
    from onestep_sr.testing import tiny_models
    from onestep_sr.training.discriminators import PatchDiscriminator, discriminator_loss, generator_loss
    from onestep_sr.training.realism_objectives import SelfAdversarial

    native = host.module("bridge.native_training")
    positive = tiny_models.conditioning(family)
    x0, x1 = family_latent(family, LATENT_SIDE), family_latent(family, LATENT_SIDE) * 0.5
    batch = {"x0": x0, "x1": x1}

    def student_net():
        model = tiny_models.build_model(family)
        comfy.model_management.load_models_gpu([model])
        net = native.NativeFlowNet(model.model, native.model_conditioning(model, positive, x0))
        add_lora(net, LoraSpec(rank=LORA_RANK, target_modules=NATIVE_TARGETS))
        return net

    results = {}
    student = student_net()
    objective = SelfAdversarial()

    def self_adversarial(optimizer):
        loss, _ = objective(student, batch, generator=torch.Generator().manual_seed(1))
        loss.backward()
        optimizer.step()

    results["self_adversarial"] = measure_step({"student": student.diffusion_model},
                                               [p for p in student.parameters() if p.requires_grad], self_adversarial)
    remove_lora(student)

    student = student_net()
    teacher_model = tiny_models.build_model(family)
    teacher = native.NativeFlowNet(teacher_model.model, native.model_conditioning(teacher_model, positive, x0))
    teacher.requires_grad_(False)
    discriminator = PatchDiscriminator(channels=16)
    t = torch.full((1,), 0.5)

    def teacher_student_discriminator(optimizer):
        x_t = 0.5 * x0 + 0.5 * x1
        with torch.no_grad():
            target = teacher(x_t, t, t)
        distill = (student(x_t, t, t) - target).square().mean()
        fake = x1 - student(x1, torch.ones(1), torch.zeros(1))
        reconstruction = (fake - x0).abs().mean()
        g_adv = generator_loss(discriminator(planar(fake), planar(x1)), "hinge")
        d_loss = discriminator_loss(discriminator(planar(x0), planar(x1)),
                                    discriminator(planar(fake.detach()), planar(x1)), "hinge")
        (distill + reconstruction + 0.1 * g_adv + d_loss).backward()
        optimizer.step()

    def teacher_student(optimizer):  # the same without the discriminator: what the teacher alone adds
        x_t = 0.5 * x0 + 0.5 * x1
        with torch.no_grad():
            target = teacher(x_t, t, t)
        distill = (student(x_t, t, t) - target).square().mean()
        fake = x1 - student(x1, torch.ones(1), torch.zeros(1))
        (distill + (fake - x0).abs().mean()).backward()
        optimizer.step()

    lora = [p for p in student.parameters() if p.requires_grad]
    results["teacher_student_d"] = measure_step(
        {"student": student.diffusion_model, "teacher": teacher.diffusion_model, "discriminator": discriminator},
        lora + list(discriminator.parameters()), teacher_student_discriminator)
    results["teacher_student"] = measure_step(
        {"student": student.diffusion_model, "teacher": teacher.diffusion_model}, lora, teacher_student)
    remove_lora(student)
    results["base_parameters"] = sum(p.numel() for p in student.diffusion_model.parameters())
    results["ratio_peak"] = results["teacher_student_d"]["peak_mib"] / results["self_adversarial"]["peak_mib"]
    results["ratio_static"] = results["teacher_student_d"]["static_mib"] / results["self_adversarial"]["static_mib"]
    results["ratio_peak_no_d"] = results["teacher_student"]["peak_mib"] / results["self_adversarial"]["peak_mib"]
    return results


# ---------------------------------------------------------------- full-size prediction


def lora_parameters(module: torch.nn.Module, rank: int, targets) -> int:
    """rank (in + out) summed over the Linear layers a LoRA of `targets` adapts (peft's match: the module's
    name equals a target or ends with '.' + target)."""
    total = 0
    for name, layer in module.named_modules():
        if isinstance(layer, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            total += rank * (layer.in_features + layer.out_features)
    return total


def full_size_models() -> dict:
    """FLUX.1 (dev) and Qwen-Image diffusion models at their released sizes, on the meta device."""
    import comfy.ldm.flux.model
    import comfy.ldm.qwen_image.model
    import comfy.ops

    ops = comfy.ops.disable_weight_init
    with torch.device("meta"):
        flux = comfy.ldm.flux.model.Flux(
            in_channels=64, out_channels=64, vec_in_dim=768, context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0,
            num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56], theta=10000, qkv_bias=True,
            guidance_embed=True, patch_size=2, operations=ops, device="meta")
        qwen = comfy.ldm.qwen_image.model.QwenImageTransformer2DModel(operations=ops, device="meta")
    return {"FLUX.1": flux, "Qwen-Image": qwen}


def predict(rank: int = PREDICTED_RANK) -> dict:
    """GiB per GPU (no sharding) that weights and the LoRA's training state take at full size:
    base P parameters at b bytes each (bf16 2, fp8 1), the LoRA's L parameters at 16 bytes (float32 weight,
    gradient, two AdamW moments):
        self-adversarial          P b + 16 L
        teacher + student + D     2 P b + 16 L (+ a PatchGAN, < 0.01 GiB): the teacher is a second base
        ... with a backbone D     3 P b + 16 L: a discriminator on the base's features (LADD / DMD-style)
    Activations come on top of all three (resolution, batch and checkpointing decide them; not predicted)."""
    from onestep_sr.adapters.lora import NATIVE_TARGETS

    out = {}
    for name, model in full_size_models().items():
        params = sum(p.numel() for p in model.parameters())
        lora = lora_parameters(model, rank, NATIVE_TARGETS)
        lora_gib = lora * TRAINED_BYTES_PER_PARAM / GIB
        rows = {}
        for dtype, size in BYTES_PER_WEIGHT.items():
            base = params * size / GIB
            rows[dtype] = {"self_adversarial_gib": base + lora_gib, "teacher_student_d_gib": 2 * base + lora_gib,
                           "teacher_student_backbone_d_gib": 3 * base + lora_gib, "base_gib": base}
        out[name] = {"parameters": params, "lora_rank": rank, "lora_parameters": lora,
                     "lora_training_state_gib": lora_gib, **rows}
    return out


def markdown(result: dict) -> str:
    machine = result["machine"]
    lines = ["# Training memory: self-adversarial vs teacher + student + discriminator", "",
             f"{machine['date']}, {machine['cpu']} ({machine['cores']} cores), torch {machine['versions'].get('torch')}; "
             "written by `python benchmarks/memory.py`.", "",
             "Method: every tensor storage an operation makes is counted while it lives (testing/memory.py, a "
             "TorchDispatchMode; exact on the CPU, where torch keeps no allocator statistics, tracemalloc does not "
             "see its buffers and peak RSS is mostly libraries). One steady-state AdamW step (the second), "
             f"student = tiny model + rank-{LORA_RANK} LoRA through NativeFlowNet (Train SR LoRA's path), latent "
             f"{LATENT_SIDE}x{LATENT_SIDE}, batch 1, float32.", "",
             "| tiny model | base params | configuration | weights held MiB | optimizer state MiB | step peak MiB | "
             "peak MiB |", "|---|---:|---|---:|---:|---:|---:|"]
    for family, rows in result["tiny"].items():
        for config in ("self_adversarial", "teacher_student", "teacher_student_d"):
            row = rows[config]
            weights = " + ".join(f"{k} {v:.2f}" for k, v in row["weights_mib"].items())
            lines.append(f"| {family} | {rows['base_parameters']:,} | {config} | {weights} | "
                         f"{row['optimizer_state_mib']:.3f} | {row['step_peak_mib']:.2f} | {row['peak_mib']:.2f} |")
        lines.append(f"| {family} | | ratio teacher+student / self-adversarial | | | | **{rows['ratio_peak_no_d']:.2f}x** |")
        lines.append(f"| {family} | | ratio teacher+student+D / self-adversarial | static {rows['ratio_static']:.2f}x"
                     f" | | | **{rows['ratio_peak']:.2f}x** |")
    flux = result["tiny"]["flux"]
    lines += ["", f"At this size the PatchGAN ({flux['teacher_student_d']['weights_mib']['discriminator']:.2f} MiB, "
              "the one Train SR LoRA uses on latents) outweighs the tiny base itself, and AdamW's state on it (two "
              "moments, trainable in full) too, so the ratio with D overstates what a full-size model sees; the "
              "ratio without D is the teacher's share. Self-adversarial's one gradient call runs on 4 stacked "
              "batches (generator, fake flow, real flow, rectification), the distillation step's student on 2: "
              f"step peaks {flux['self_adversarial']['step_peak_mib']:.2f} vs "
              f"{flux['teacher_student']['step_peak_mib']:.2f} MiB (tiny FLUX). At full size the weights dominate:", "",
              f"## Predicted per GPU at full size (no sharding; LoRA rank {PREDICTED_RANK} on the native targets)", "",
              "Exact parameter counts of the diffusion models built from ComfyUI's classes on the meta device. "
              "self-adversarial = P b + 16 L; teacher + student + PatchGAN = 2 P b + 16 L; with a discriminator "
              "on a backbone copy (LADD/DMD-style) = 3 P b + 16 L, where P is the base's parameters, b its bytes "
              "per weight (bf16 2, fp8 1) and L the LoRA's parameters (float32 weight, gradient and two AdamW "
              "moments: 16 bytes each). Activations come on top (resolution, batch, checkpointing).", "",
              "| model | P | L | weights | self-adversarial GiB | teacher + student + D GiB | with backbone D GiB |",
              "|---|---:|---:|---|---:|---:|---:|"]
    for name, row in result["predicted"].items():
        for dtype in BYTES_PER_WEIGHT:
            r = row[dtype]
            lines.append(f"| {name} | {row['parameters'] / 1e9:.2f} B | {row['lora_parameters'] / 1e6:.1f} M | {dtype} | "
                         f"{r['self_adversarial_gib']:.1f} | {r['teacher_student_d_gib']:.1f} | "
                         f"{r['teacher_student_backbone_d_gib']:.1f} |")
    qwen = result["predicted"]["Qwen-Image"]["bf16"]
    lines += ["", f"So Qwen-Image (20 B) in bf16 needs {qwen['self_adversarial_gib']:.1f} GiB for a self-adversarial "
              "LoRA before activations, which leaves room for them on one 80 GB GPU (74.5 GiB), where holding a "
              f"teacher copy beside it needs {qwen['teacher_student_d_gib']:.1f} GiB before activations: more than "
              "the GPU. fp8 base weights halve every base term.", ""]
    return "\n".join(lines)


def collect(host, threads: int = 2) -> dict:
    """Every figure, with an in-process ComfyUI `host` (testing/comfy_host.InProcessHost)."""
    return {"machine": machine_info(threads), "method": "TensorMemory (testing/memory.py): live tensor storage bytes",
            "tiny": {family: configurations(family, host) for family in ("flux", "qwen_image")},
            "predicted": predict()}


def write(result: dict, results_dir: Path = RESULTS) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "memory.json").write_text(json.dumps(result, indent=1) + "\n")
    (results_dir / "memory.md").write_text(markdown(result))


def run(threads: int = 2) -> dict:
    torch.set_num_threads(threads)
    from onestep_sr.testing import comfy_host

    base = tempfile.mkdtemp(prefix="onestep-sr-memory-")
    host = comfy_host.InProcessHost(comfy_host.host_dir(), comfy_host.prepare_base_dir(base))
    result = collect(host, threads)
    write(result)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    result = run(args.threads)
    print(markdown(result))


if __name__ == "__main__":
    main()
