"""The default SR network and its pipeline, pure PyTorch: no ComfyUI imports here."""
