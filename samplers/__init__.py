"""Pure-PyTorch flow-map algebra and k-diffusion samplers: no ComfyUI imports here (bridge/ wraps them)."""
