"""Pure PyTorch training library: objectives, EMA, checkpoints and the trainer (no ComfyUI imports)."""

from .checkpoint import atomic_write, load_tensors, read_metadata, save_tensors
from .ema import make_ema, update_ema
from .objectives import OBJECTIVES, flow_map, make_objective, mean_square, per_sample
from .trainer import CHECKPOINT_NAME, LOSS_CURVE_NAME, TrainConfig, Trainer

__all__ = [
    "OBJECTIVES", "CHECKPOINT_NAME", "LOSS_CURVE_NAME", "TrainConfig", "Trainer",
    "atomic_write", "flow_map", "load_tensors", "make_ema", "make_objective", "mean_square",
    "per_sample", "read_metadata", "save_tensors", "update_ema",
]
