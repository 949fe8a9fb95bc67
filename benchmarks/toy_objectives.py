"""Every training objective on the 2-D Gaussian mixture (one command):

    python benchmarks/toy_objectives.py [--steps 2000] [--overwrite]

Each objective trains the same small MLP (testing.toy.ToyFlowMapNet, same seed, same batches)
for --steps optimizer steps with the package's Trainer; the EMA network then samples 1, 2, 4
and 16 jumps from standard noise with the package's sampler, and the table gives the sliced
2-Wasserstein distance (SWD, lower is better) to held-out mixture samples. Flow matching is
sampled with Euler steps (the reference: one step collapses towards the mean); the flow maps
jump along their map (flowsr_consistency, a consistency model, always jumps to 0 and re-noises,
gamma = 1). The "data" row is the SWD between two independent draws of the mixture, the floor
the estimate can reach at this sample size. Writes benchmarks/results/toy_objectives.md
(table, settings, machine, date) and toy_objectives.png (scatter of one-step samples).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from timing import machine_info

from onestep_sr.files.atomic import atomic_write
from onestep_sr.testing.toy import gaussian_mixture, mixture_batches, sample, sliced_wasserstein, ToyFlowMapNet
from onestep_sr.training.objectives import make_objective
from onestep_sr.training.plotting import scatter_panels
from onestep_sr.training.trainer import TrainConfig, Trainer

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "results" / "toy_objectives.md"
STEP_COUNTS = (1, 2, 4, 16)
# (row name, objective, options, how it samples). flowsr's HR term regresses onto x0, which a
# noise source turns into the data mean, so the toy runs its pure consistency part.
RUNS = [
    ("flow_matching (Euler)", "flow_matching", {}, "euler"),
    ("shortcut", "shortcut", {}, "map"),
    ("lagrangian", "lagrangian", {}, "map"),
    ("eulerian", "eulerian", {}, "map"),
    ("meanflow", "meanflow", {}, "map"),
    ("flowsr_consistency (hr_weight=0)", "flowsr_consistency", {"hr_weight": 0.0}, "consistency"),
]


def draw(net, noise: torch.Tensor, steps: int, mode: str) -> torch.Tensor:
    if mode == "euler":
        return sample(net, noise, steps, family="plain")
    return sample(net, noise, steps, family="two_time", gamma=1.0 if mode == "consistency" else 0.0)


def run(args) -> tuple[list[dict], list]:
    generator = torch.Generator().manual_seed(123)
    target = gaussian_mixture(args.samples, generator)
    noise = torch.randn(args.samples, 2, generator=generator)
    floor = sliced_wasserstein(gaussian_mixture(args.samples, generator), target)
    rows = [{"name": "data (second draw of the mixture)", "swd": {k: floor for k in STEP_COUNTS}, "seconds": 0.0}]
    panels = [("data", target)]
    for name, objective, options, mode in RUNS:
        torch.manual_seed(args.seed)
        net = ToyFlowMapNet(hidden=args.hidden)
        with tempfile.TemporaryDirectory() as out:
            trainer = Trainer(net, make_objective(objective, **options), mixture_batches(args.batch),
                              TrainConfig(output_dir=out, steps=args.steps, lr=args.lr, seed=args.seed,
                                          ema_decay=args.ema_decay, checkpoint_every=0, progress=False))
            started = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - started
        samples = {k: draw(trainer.ema_net, noise, k, mode) for k in STEP_COUNTS}
        rows.append({"name": name, "swd": {k: sliced_wasserstein(samples[k], target) for k in STEP_COUNTS},
                     "seconds": seconds})
        panels.append((f"{name.split(' ')[0]} 1 step", samples[1]))
        if mode == "euler":
            panels.append((f"flow_matching {STEP_COUNTS[-1]} Euler", samples[STEP_COUNTS[-1]]))
        print(f"{name:36s} " + " ".join(f"{rows[-1]['swd'][k]:.3f}" for k in STEP_COUNTS)
              + f"  ({seconds:.0f} s)", flush=True)
    return rows, panels


def report(rows, args, machine) -> str:
    euler_one = rows[1]["swd"][1]
    lines = [
        "# Training objectives on the 2-D Gaussian mixture",
        "",
        "Sliced 2-Wasserstein distance (lower is better) between samples and held-out data, by number of",
        "network evaluations. `vs Euler 1` is the one-step SWD as a fraction of one Euler step of flow",
        "matching. Command: `python benchmarks/toy_objectives.py"
        + (f" --steps {args.steps}" if args.steps != 2000 else "") + "`.",
        "",
        "| objective | " + " | ".join(f"{k} step{'s' if k > 1 else ''}" for k in STEP_COUNTS)
        + " | vs Euler 1 | train s |",
        "|---|" + "---:|" * (len(STEP_COUNTS) + 2),
    ]
    for row in rows:
        ratio = row["swd"][1] / euler_one
        lines.append(f"| {row['name']} | " + " | ".join(f"{row['swd'][k]:.3f}" for k in STEP_COUNTS)
                     + f" | {ratio:.2f} | {row['seconds']:.0f} |")
    lines += [
        "",
        f"Settings: 8 modes on a circle of radius 2 (std 0.15), standard-noise source; MLP width "
        f"{args.hidden} x 3, Fourier time features; {args.steps} steps, batch {args.batch}, AdamW lr {args.lr}, "
        f"EMA {args.ema_decay}, seed {args.seed}; objectives at their default options unless named; "
        f"{args.samples} samples per SWD (512 projections).",
        "",
        "Machine: " + ", ".join(f"{k}: {v}" for k, v in machine.items() if k != "versions"),
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
        "",
        "SWD compares the sample clouds through 1-D projections; it rewards mass on the ring of modes",
        "but is lenient about mass between modes, so read it with the figure of one-step samples below.",
        "",
        f"![one-step samples]({args.output.with_suffix('.png').name})",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ema-decay", type=float, default=0.995)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = parser.parse_args(argv)
    figure = args.output.with_suffix(".png")
    existing = [p for p in (args.output, figure) if p.exists()]
    if existing and not args.overwrite:
        parser.error(f"{existing[0]} exists; pass --overwrite to replace it or choose another --output")
    torch.set_num_threads(args.threads)
    machine = machine_info(args.threads)
    rows, panels = run(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    scatter_panels(panels, figure, extent=3.0)
    text = report(rows, args, machine)
    atomic_write(args.output, lambda tmp: Path(tmp).write_text(text))
    print(f"wrote {args.output} and {figure}")


if __name__ == "__main__":
    main()
