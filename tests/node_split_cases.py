"""The inputs of the saved run of the one-click node from before the simple/advanced split
(tests/data/upscale_node_before_split.safetensors, written by the node at commit 2e71e17): the advanced node
must still give exactly those outputs."""

import torch

from onestep_sr.cli import DEFAULT_MODEL
from onestep_sr.testing import tiny_models

# the widget values of the pre-split node at its defaults
DEFAULTS = dict(scale_by=4.0, steps=1, family="auto", start_mode="lr", t_start=1.0, shift=1.0, gamma=0.0,
                bridge_scale=1.0, guidance=1.0, seed=0, upscale_method="bicubic", tile_size=0, vae_tile_size=1024,
                colour_fix="none")
CASES = {
    "default_model": {},
    "default_model_guided_stochastic_tiled": dict(steps=2, guidance=2.0, gamma=0.5, seed=7, tile_size=128,
                                                  colour_fix="wavelet"),  # 2 x 2 tiles of the 144 x 160 output
    "default_model_realism_x8": dict(scale_by=8.0, realism=0.5, tile_overlap=16),
    "tiny_sd3_prompts": dict(scale_by=2.0, steps=2, guidance=1.5, shift=3.0),
    "tiny_sd2_noised_lr": dict(scale_by=2.0, start_mode="noised_lr", t_start=0.6, seed=3, upscale_method="lanczos"),
}


def case_inputs(host, name: str) -> dict:
    """The keyword inputs of case `name` for the node, its MODEL and VAE loaded in `host`."""
    height, width = (36, 40) if name.endswith("tiled") else (12, 17)
    image = torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(len(name)))
    if name.startswith("default_model"):
        model, vae = host.module("bridge.default_model").load_default_model(str(DEFAULT_MODEL))
        extra = {}
    else:
        family = name.split("_")[1]
        model = tiny_models.build_model(family)
        vae = tiny_models.build_vae(tiny_models.FAMILIES[family]["latent_channels"])
        extra = {"positive": tiny_models.conditioning(family, seed=1),
                 "negative": tiny_models.conditioning(family, seed=2)}
    return {**DEFAULTS, **CASES[name], **extra, "model": model, "vae": vae, "image": image}
