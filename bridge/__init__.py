"""The bridge between ComfyUI and the pure core: latents, sigmas and the guider, model wrapping,
LoRA patches and training runs. The only code besides nodes/ that imports ComfyUI; node files
hold node classes and import the bridge, never each other."""
