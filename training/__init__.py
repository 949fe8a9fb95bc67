"""Pure PyTorch training library: data, degradations, objectives, EMA, checkpoints and the trainer
(no ComfyUI imports)."""
