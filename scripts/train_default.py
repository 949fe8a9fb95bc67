"""Train the default OneStep SR model (one command; seeded; resumable: rerun it to continue).

    python scripts/train_default.py                       # train to --steps, checkpoint on the way
    python scripts/train_default.py --export weights/onestep_sr_default.safetensors

Data: random HR crops of the training photos (onestep_sr.models.photos; fetch the wallpapers
first with scripts/fetch_training_photos.sh), ×4 and ×8 mixed per batch, bicubic degradation
(most batches) or the seeded second-order real-world chain. Start mode 'lr': the source x1 is the LR
image bicubic-upsampled to the HR size, in [-1, 1].
Objective: `trajectory_endpoint` (every jump regressed onto HR from the states the model's own
sampler visits; training/objectives.py; the shipped model), or `shortcut` (Shortcut
self-consistency with FlowSR's HR regularisation). The run lives in --output-dir (outside the
repository by default).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from onestep_sr.files.cache import runs_dir
from onestep_sr.files.digest import file_sha256
from onestep_sr.files.tensors import read_metadata
from onestep_sr.models.flow_map_sr import CONFIG_KEY, FlowMapSRNet, deepened, load_model
from onestep_sr.models.pipeline import START_MODE
from onestep_sr.training.objectives import make_objective
from onestep_sr.training.photos import CropSampler, write_manifest
from onestep_sr.training.sr_data import SCALES, sr_batches
from onestep_sr.training.trainer import CHECKPOINT_NAME, LR_SCHEDULES, TrainConfig, Trainer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=str(runs_dir() / "default"), help="the run (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=96, help="HR crop side (a multiple of 8)")
    parser.add_argument("--objective", choices=("trajectory_endpoint", "perceptual", "shortcut"),
                        default="trajectory_endpoint",
                        help="perceptual: trajectory_endpoint plus --perceptual-weight x ST-LPIPS-VGG")
    parser.add_argument("--perceptual-weight", type=float, default=0.05,
                        help="perceptual: the ST-LPIPS weight (on 4 samples' 64² windows per step)")
    parser.add_argument("--start-fraction", type=float, default=0.5,
                        help="trajectory_endpoint: fraction of each batch trained on the one-step jump from t = 1")
    parser.add_argument("--distance", choices=("l2", "l1"), default="l2",
                        help="trajectory_endpoint: the per-pixel error of the endpoint regression")
    parser.add_argument("--real-fraction", type=float, default=0.1,
                        help="fraction of batches degraded by the real-world chain instead of bicubic")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="cosine",
                        help="cosine: decays to 0 at --steps (a resumed run continues the schedule)")
    parser.add_argument("--ema-decay", type=float, default=0.998)
    parser.add_argument("--endpoint-weight", type=float, default=1.0)
    parser.add_argument("--source-noise", type=float, default=0.0,
                        help="std of the Gaussian noise on the LR source, in [-1, 1] units")
    # shortcut only: its consistency samples sit on the dyadic grid, where t = 1 (the one-step start) is
    # frequent (levels 3: 7/12 of them), and the endpoint term regresses every sample's full
    # jump onto HR; a large consistency fraction and few levels put the compute on exactly the
    # times a 1-, 2- or 4-step sampler visits.
    parser.add_argument("--consistency-fraction", type=float, default=0.5)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=8, help="residual blocks of the network")
    parser.add_argument("--init", default=None,
                        help="start from these default-model weights, deepened to --blocks with identity blocks "
                             "(ignored when the run resumes from its checkpoint)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--export", default=None,
                        help="after training, write the EMA weights here (+ <name>.data.json manifest)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.crop % max(SCALES):
        parser.error(f"--crop must be a multiple of {max(SCALES)}, got {args.crop}")
    torch.set_num_threads(args.threads)

    manifest = write_manifest(Path(args.output_dir) / "data_manifest.json")
    checkpoint = Path(args.output_dir) / CHECKPOINT_NAME
    previous = read_metadata(checkpoint) if checkpoint.exists() else {}
    if args.init:
        base = load_model(args.init)
        if base.source_noise != args.source_noise:
            parser.error(f"--init {args.init} was trained with source noise {base.source_noise}, not {args.source_noise}")
        net = deepened(base, args.blocks).train()
    else:
        net = FlowMapSRNet(blocks=args.blocks, source_noise=args.source_noise)
    if args.objective == "shortcut":
        objective = make_objective("shortcut", endpoint_weight=args.endpoint_weight, levels=args.levels,
                                   consistency_fraction=args.consistency_fraction)
    elif args.objective == "perceptual":
        objective = make_objective("perceptual", start_fraction=args.start_fraction, distance=args.distance,
                                   perceptual_weight=args.perceptual_weight)
    else:
        objective = make_objective("trajectory_endpoint", start_fraction=args.start_fraction,
                                   distance=args.distance)
    config = TrainConfig(output_dir=args.output_dir, steps=args.steps, seed=args.seed, lr=args.lr,
                         lr_schedule=args.lr_schedule,
                         ema_decay=args.ema_decay, checkpoint_every=args.checkpoint_every,
                         progress=not args.no_progress)
    command = "python scripts/train_default.py " + shlex.join(
        a for a in (argv if argv is not None else sys.argv[1:]))
    # every command that shaped the run, with the step it resumed from: the full recipe
    history = previous.get("training_commands", []) + [
        {"from_step": previous.get("step", 0), "command": command.strip()}]
    metadata = {"family": net.family, "start_mode": START_MODE, "scales": list(SCALES),
                "data_manifest_hash": manifest["hash"], "training_command": command.strip(),
                "training_commands": history,
                "batch": args.batch, "crop": args.crop, "real_fraction": args.real_fraction,
                **({"init_sha256": file_sha256(args.init)} if args.init else {}),
                CONFIG_KEY: net.config}
    batches = sr_batches(CropSampler(), args.batch, args.crop, args.real_fraction, args.source_noise)
    trainer = Trainer(net, objective, batches, config, metadata=metadata)
    summary = trainer.train()
    print(f"step {summary['step']} loss {summary['loss']:.4g} ({summary['samples_per_s']:.1f} samples/s)")
    if args.export:
        export = Path(args.export)
        trainer.export_weights(export)
        write_manifest(export.with_suffix(".data.json"))
        print(f"wrote {export} and {export.with_suffix('.data.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
