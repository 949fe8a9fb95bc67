"""Pure PyTorch image handling around the SR networks: layouts, resampling, tiling, colour (no ComfyUI imports)."""
