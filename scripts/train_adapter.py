"""Fine-tune a LoRA adapter on the default OneStep SR model, adversarially (FlowMapSR) or with any other
objective, e.g. the realism objectives (one command; seeded; resumable: rerun it to continue).

    python scripts/train_adapter.py --export $ONESTEP_SR_CACHE/runs/adapter.safetensors

Data and degradations are the default model's (training/sr_data.py: random HR crops of the
training photos, x4 and x8, bicubic or the seeded real-world chain); the held-out photos never
enter. Generator: the base network with a peft LoRA (base frozen). Loss: reconstruction +
adversarial (a patch discriminator, or one on the frozen base network's encoder features) +
the flow-map consistency term of the base's own objective (training/adversarial.py). The defaults are the setting
that improved NIQE within the PSNR bound on the held-out photos (benchmarks/adapter_quality.py);
longer or stronger adversarial runs (500 steps, weight 0.25-0.5) made NIQE worse. The exported
file uses ComfyUI's LoRA keys, so the stock "Load LoRA" node applies it to the MODEL of
"Load OneStep SR Model"; --export-format peft writes a PEFT folder instead. The run lives in
--output-dir (outside the repository by default); benchmarks/adapter_quality.py measures it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from onestep_sr.adapters.lora import DEFAULT_TARGETS, FILE_FORMATS, LoraSpec
from onestep_sr.files.cache import runs_dir
from onestep_sr.files.digest import file_sha256
from onestep_sr.files.tensors import read_metadata
from onestep_sr.models.flow_map_sr import load_model
from onestep_sr.training.adversarial import (DEFAULT_CONSISTENCY, RECONSTRUCTIONS, AdversarialLoRA,
                                             AdversarialLoRATrainer)
from onestep_sr.training.discriminators import DISCRIMINATORS, GAN_LOSSES
from onestep_sr.training.lora_training import LoRATrainer
from onestep_sr.training.objectives import OBJECTIVES, make_objective
from onestep_sr.training.photos import CropSampler, write_manifest
from onestep_sr.training.sr_data import SCALES, sr_batches
from onestep_sr.training.trainer import ENGINES, TrainConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BASE = REPO / "weights" / "onestep_sr_default.safetensors"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=str(DEFAULT_BASE),
                        help="the default model's weights (or a training checkpoint of it: its EMA is used)")
    parser.add_argument("--output-dir", default=str(runs_dir() / "adapter"), help="the run (default: %(default)s)")
    parser.add_argument("--init-adapter", default=None,
                        help="a LoRA file of this script to train further (same --rank, --alpha, --targets)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=96, help="HR crop side (a multiple of 8)")
    parser.add_argument("--real-fraction", type=float, default=0.2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank, scaling 1)")
    parser.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS), help="LoRA target module names")
    parser.add_argument("--objective", choices=["adversarial", *sorted(OBJECTIVES)], default="adversarial",
                        help="adversarial: reconstruction + GAN (+ perceptual) + consistency (the flags below); or any "
                             "objective of training/objectives.py with --objective-options (the realism objectives: "
                             "perceptual, tv_lpips, self_adversarial, timestep_rectification)")
    parser.add_argument("--objective-options", type=json.loads, default={},
                        help='JSON options of a non-adversarial --objective, e.g. \'{"perceptual_weight": 0.5}\'')
    parser.add_argument("--discriminator", choices=DISCRIMINATORS, default="patch")
    parser.add_argument("--feature-time", type=float, default=0.25,
                        help="features discriminator: time on the LR -> HR path its backbone sees the image at")
    parser.add_argument("--gan-loss", choices=GAN_LOSSES, default="hinge")
    parser.add_argument("--adversarial-weight", type=float, default=0.2)
    parser.add_argument("--reconstruction", choices=RECONSTRUCTIONS, default="l1")
    parser.add_argument("--reconstruction-weight", type=float, default=1.0)
    parser.add_argument("--consistency", choices=sorted(OBJECTIVES), default=None,
                        help="the flow-map consistency term (default: the objective the base was trained with)")
    parser.add_argument("--consistency-weight", type=float, default=0.25)
    parser.add_argument("--r1-weight", type=float, default=0.0)
    parser.add_argument("--perceptual-weight", type=float, default=0.0,
                        help="adversarial: weight of ST-LPIPS-VGG on the SR output (FlowMapSR's perceptual term)")
    parser.add_argument("--perceptual-samples", type=int, default=AdversarialLoRA.perceptual_samples,
                        help="adversarial: how many samples of each batch the perceptual term sees")
    parser.add_argument("--perceptual-crop", type=int, default=AdversarialLoRA.perceptual_crop,
                        help="adversarial: side of the random window the perceptual term sees")
    parser.add_argument("--sample-steps", type=int, default=1, help="jumps that make the SR output D sees")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--ema-decay", type=float, default=0.99)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--export", default=None, help="after training, write the (EMA) adapter here")
    parser.add_argument("--export-format", choices=FILE_FORMATS, default="comfy")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --export file")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--engine", choices=ENGINES, default="manual",
                        help="manual: the trainer's own all-reduce (every objective); accelerate: the net wrapped by "
                             "accelerate (DDP, or FSDP / DeepSpeed with configs/accelerate/*.yaml; see TRAINING.md)")
    parser.add_argument("--gradient-checkpointing", default="",
                        help="'auto' or block paths: recompute those blocks' activations in the backward")
    args = parser.parse_args(argv)
    if args.crop % max(SCALES):
        parser.error(f"--crop must be a multiple of {max(SCALES)}, got {args.crop}")
    base = Path(args.base)
    if not base.is_file():
        parser.error(f"--base {base} does not exist: train the default model first "
                     "(scripts/train_default.py) or point --base at its weights")
    if args.init_adapter and not Path(args.init_adapter).is_file():
        parser.error(f"--init-adapter {args.init_adapter} does not exist")
    if args.export and Path(args.export).exists() and not args.overwrite:
        parser.error(f"--export {args.export} exists; pass --overwrite or choose another path")
    torch.set_num_threads(args.threads)

    # the objective first: a bad option is refused before the data manifest or the model is touched
    adversarial = args.objective == "adversarial"
    try:
        if adversarial:
            objective = AdversarialLoRA(
                gan_loss=args.gan_loss, adversarial_weight=args.adversarial_weight,
                reconstruction=args.reconstruction, reconstruction_weight=args.reconstruction_weight,
                consistency=args.consistency or read_metadata(base).get("objective", DEFAULT_CONSISTENCY),
                consistency_weight=args.consistency_weight, r1_weight=args.r1_weight,
                sample_steps=args.sample_steps, perceptual_weight=args.perceptual_weight,
                perceptual_samples=args.perceptual_samples, perceptual_crop=args.perceptual_crop)
        else:
            objective = make_objective(args.objective, **args.objective_options)
    except (TypeError, ValueError) as error:
        parser.error(f"--objective {args.objective}: {error} (set through --objective-options for a "
                     "non-adversarial objective, else through the flags of the same names)")
    manifest = write_manifest(Path(args.output_dir) / "data_manifest.json")
    net = load_model(str(base)).train()
    spec = LoraSpec(rank=args.rank, alpha=args.alpha, target_modules=tuple(args.targets))
    config = TrainConfig(output_dir=args.output_dir, steps=args.steps, seed=args.seed, lr=args.lr,
                         ema_decay=args.ema_decay, checkpoint_every=args.checkpoint_every,
                         progress=not args.no_progress, engine=args.engine,
                         gradient_checkpointing=args.gradient_checkpointing)
    command = "python scripts/train_adapter.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    metadata = {"family": net.family, "base_model": base.name, "base_model_sha256": file_sha256(base),
                "data_manifest_hash": manifest["hash"], "training_command": command.strip(),
                "batch": args.batch, "crop": args.crop, "real_fraction": args.real_fraction}
    probe = (torch.zeros(1, 3, args.crop, args.crop), torch.zeros(1, 3, args.crop, args.crop))
    batches = sr_batches(CropSampler(), args.batch, args.crop, args.real_fraction, net.source_noise)
    if adversarial:
        trainer = AdversarialLoRATrainer(net, spec, objective, batches, config, probe=probe,
                                         discriminator=args.discriminator, metadata=metadata,
                                         discriminator_options=({"feature_time": args.feature_time}
                                                                if args.discriminator == "features" else None),
                                         initial=args.init_adapter)
    else:
        trainer = LoRATrainer(net, spec, objective, batches, config, metadata=metadata, initial=args.init_adapter)
    summary = trainer.train()
    print(f"step {summary['step']} loss {summary['loss']:.4g} ({summary['samples_per_s']:.2f} samples/s)")
    if args.export:
        path = trainer.export(args.export, file_format=args.export_format, overwrite=args.overwrite)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
