"""The plain network issue 3 compares the default model with, trained here and measured beside it:

    python benchmarks/plain_reference.py          # train (resumable: rerun to continue), then export
    python benchmarks/default_model_quality.py    # the exported reference joins the table

What a user could have instead of the flow-map model (issue 3, "learn per FLOP"): a plain
0.65 M-parameter residual network (conv_in, 8 conv-ReLU-conv blocks of width 64, conv_out) on
the pixel-unshuffle x4 view of the bicubic-upsampled LR image, one model for x4 and x8, trained
by L1 regression onto HR. It is trained with the package's own trainer, objective
(`trajectory_endpoint` with every sample on the one-step jump is exactly regression onto HR) and
data (`training.sr_data.sr_batches`: the default model's photos, crops, scales and degradations),
so the comparison differs only in the network's time inputs and the flow-map path training.

The run lives in $ONESTEP_SR_CACHE/runs/plain_reference (never in the repository); its exported
EMA weights are what `peers.peer_methods` puts in the quality table as PLAIN_NAME.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from onestep_sr.files.tensors import load_tensors
from onestep_sr.training.objectives import make_objective
from onestep_sr.files.cache import runs_dir
from onestep_sr.training.photos import CropSampler, write_manifest
from onestep_sr.training.sr_data import sr_batches
from onestep_sr.training.trainer import TrainConfig, Trainer

PLAIN_NAME = "plain reference (L1 regression)"
RUN_DIR = runs_dir() / "plain_reference"
WEIGHTS = RUN_DIR / "plain_reference.safetensors"
STRIDE = 4


class PlainSRNet(nn.Module):
    """Plain residual SR network with the flow-map interface ``net(x, t, s, cond) -> u``.

    It ignores t, s and cond: its one jump x1 -> x1 - u is the regression onto HR, which the
    package's sampler runs as one step (family "shortcut": x0 = x - t u at t = 1)."""

    family = "shortcut"
    source_noise = 0.0

    def __init__(self, width: int = 64, blocks: int = 8, channels: int = 3):
        super().__init__()
        unshuffled = channels * STRIDE**2
        self.conv_in = nn.Conv2d(unshuffled, width, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1))
            for _ in range(blocks))
        self.conv_out = nn.Conv2d(width, unshuffled, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # starts as the bicubic upscale
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t=None, s=None, cond=None) -> torch.Tensor:
        height, width = x.shape[-2:]
        padded = F.pad(x, (0, -width % STRIDE, 0, -height % STRIDE), mode="replicate")
        hidden = self.conv_in(rearrange(padded, "b c (h p) (w q) -> b (c p q) h w", p=STRIDE, q=STRIDE))
        for block in self.blocks:
            hidden = hidden + block(hidden)
        u = rearrange(self.conv_out(hidden), "b (c p q) h w -> b c (h p) (w q)", p=STRIDE, q=STRIDE)
        return u[..., :height, :width]


def load_plain_reference(path: Path = WEIGHTS) -> PlainSRNet:
    net = PlainSRNet()
    net.load_state_dict(load_tensors(path)[0])
    return net.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # 8600 steps: about 35 minutes on 2 CPU cores, the "40 minutes" budget for this network
    parser.add_argument("--steps", type=int, default=8600)
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (cosine to 0)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", default=str(RUN_DIR))
    parser.add_argument("--export", default=str(WEIGHTS), help="where the EMA weights go (replaced)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    manifest = write_manifest(Path(args.output_dir) / "data_manifest.json")
    config = TrainConfig(output_dir=args.output_dir, steps=args.steps, lr=args.lr, lr_schedule="cosine",
                         ema_decay=0.998, progress=not args.no_progress)
    objective = make_objective("trajectory_endpoint", start_fraction=1.0, distance="l1")
    batches = sr_batches(CropSampler(), batch=16, crop=96, real_fraction=0.1)
    metadata = {"family": PlainSRNet.family, "start_mode": "lr", "data_manifest_hash": manifest["hash"],
                "network": "benchmarks/plain_reference.py PlainSRNet"}
    trainer = Trainer(PlainSRNet(), objective, batches, config, metadata=metadata)
    summary = trainer.train()
    trainer.export_weights(args.export, overwrite=True)
    print(f"step {summary['step']} loss {summary['loss']:.4g}; wrote {args.export}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
