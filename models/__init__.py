"""Pure PyTorch: no ComfyUI imports here."""
