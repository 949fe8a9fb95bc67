"""Suite sections 1-3, measured inside the real ComfyUI host (testing/comfy_host.py) in this process.

The default model is loaded through the extension's own loader function
(bridge/default_model.py `load_default_model`), the one-click node is the extension's
`OneStepSR_Upscale` function (bridge/upscale.py), and the multi-step comparison uses ComfyUI's stock sampling
(`nodes.common_ksampler`, the KSampler node's function, and `comfy.samplers` CFGGuider +
euler + the "simple" schedule, which SamplerCustomAdvanced runs).

Every timing interleaves the compared calls (A, B, A, B, ...) so that load from other
processes falls on both, and reports the best of the repeats.
"""

from __future__ import annotations

import importlib
import statistics
import tempfile
from pathlib import Path

import torch

from metrics import psnr, ssim
from timing import time_runs

from onestep_sr.models.pipeline import START_MODE, lr_source, upscale as pipeline_upscale
from onestep_sr.processing.images import bchw_to_bhwc, bhwc_to_bchw
from onestep_sr.processing.resample import bicubic_downscale, bicubic_upscale
from onestep_sr.testing import comfy_host
from onestep_sr.training.photos import held_out_image

SCALE = 4
MULTI_STEPS = 20
GUIDANCE_WEIGHT = 2.0


def time_interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """time_runs for several callables, run in turn so that they share the machine's conditions."""
    stats = {name: {"runs": [], "cpu_runs": []} for name in fns}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            run = time_runs(fn, 1, 0)
            stats[name]["runs"] += run["runs"]
            stats[name]["cpu_runs"] += run["cpu_runs"]
            stats[name]["result"] = run["result"]
    for entry in stats.values():
        entry["best"], entry["cpu_best"] = min(entry["runs"]), min(entry["cpu_runs"])
    return stats


class EvaluationCounter:
    """Counts the network's forward calls and the images they processed (batch items)."""

    def __init__(self, net: torch.nn.Module):
        self.calls = self.items = 0
        net.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1
        self.items += args[0].shape[0]

    def reset(self) -> None:
        self.calls = self.items = 0


class ComfySession:
    """ComfyUI imported here with the extension loaded, and the default model loaded by its node."""

    def __init__(self, weights: Path):
        host_path = comfy_host.host_dir()
        if not (host_path / "main.py").is_file():
            raise FileNotFoundError(f"no ComfyUI host at {host_path}: run `bash scripts/setup_host.sh` first")
        self._base = tempfile.TemporaryDirectory(prefix="onestep-sr-bench-")
        self.host = comfy_host.InProcessHost(host_path, comfy_host.prepare_base_dir(self._base.name))
        import comfy.samplers
        import comfy.utils
        import nodes

        comfy.utils.PROGRESS_BAR_ENABLED = False  # no tqdm lines in the benchmark's output
        self.comfy_samplers, self.nodes = comfy.samplers, nodes
        bridge = f"{self.host.extension_module.__name__}.bridge"
        self.upscale_node = importlib.import_module(f"{bridge}.upscale").upscale
        self.decode_sr = importlib.import_module(f"{bridge}.latents").decode_sr
        self.condition = self.host.extension_nodes["OneStepSR_Conditioning"]().condition
        self.model, self.vae = importlib.import_module(f"{bridge}.default_model").load_default_model(str(weights))
        self.net = self.model.model.diffusion_model.net  # the very weights ComfyUI samples with
        # a pass-through sampling hook: the node then samples through ComfyUI's sampler, as it does for
        # any MODEL that a node has patched with a wrapper or a cfg function
        self.hooked_model = self.model.clone()
        self.hooked_model.set_model_unet_function_wrapper(
            lambda apply_model, args: apply_model(args["input"], args["timestep"], **args["c"]))
        self.counter = EvaluationCounter(self.net)

    def close(self) -> None:
        self._base.cleanup()

    # ------------------------------------------------------------ the ways to upscale

    def node(self, lr_bchw: torch.Tensor, steps: int = 1, guidance: float = 1.0, auto_tile: bool = False,
             hooked: bool = False) -> torch.Tensor:
        """The one-click node, as ComfyUI's executor calls it (inference mode), with one tile covering
        the image (the same work as the bare pipeline) or, with `auto_tile`, the node's automatic tile.
        No conditioning is connected: for the default model the node supplies its own positive and
        (softened-input) negative branches. `hooked`: the MODEL with a pass-through sampling hook,
        which sends the node through ComfyUI's sampler."""
        tile_size = 0 if auto_tile else SCALE * max(lr_bchw.shape[-2:])
        with torch.inference_mode():
            out = self.upscale_node(model=self.hooked_model if hooked else self.model, vae=self.vae, image=bchw_to_bhwc(lr_bchw), scale_by=float(SCALE),
                                    steps=steps, family="auto", start_mode=START_MODE, t_start=1.0, shift=1.0,
                                    gamma=0.0, bridge_scale=1.0, guidance=guidance, seed=0, tile_size=tile_size)
        return bhwc_to_bchw(out)

    def pipeline(self, lr_bchw: torch.Tensor, steps: int = 1) -> torch.Tensor:
        """The bare work: bicubic 'encode', the network evaluations, 'decode' (clamp), no ComfyUI."""
        with torch.inference_mode():
            return pipeline_upscale(self.net, lr_bchw, SCALE, steps=steps)

    def network_only(self, lr_bchw: torch.Tensor):
        """A callable running just the one network evaluation of a 1-step upscale, inputs prepared."""
        cond = bicubic_upscale(lr_bchw, SCALE) * 2 - 1
        x = lr_source(cond, self.net.source_noise, torch.Generator().manual_seed(0))
        t, s = torch.ones(1), torch.zeros(1)

        def run():
            with torch.inference_mode():
                return self.net(x, t, s, cond)

        return run

    def stock_ksampler(self, lr_bchw: torch.Tensor, steps: int, denoise: float) -> torch.Tensor:
        """ComfyUI's KSampler (euler, simple) on the LR latent, img2img-style: Gaussian noise mixed in
        at the first of the last `denoise` fraction of the schedule."""
        with torch.inference_mode():
            positive, negative, latent = self._encode(lr_bchw)
            (out,) = self.nodes.common_ksampler(self.model, 0, steps, 1.0, "euler", "simple", positive, negative,
                                                latent, denoise=denoise)
            return bhwc_to_bchw(self.decode_sr(self.vae, out))

    def stock_euler_from_lr(self, lr_bchw: torch.Tensor, steps: int) -> torch.Tensor:
        """ComfyUI's stock euler sampler and 'simple' schedule through CFGGuider (what
        SamplerCustomAdvanced runs), started where this model's flow starts: at t = 1 the state is
        the model's source, the upscaled LR image plus its seeded source noise (models.pipeline.lr_source),
        passed as the 'noise' since ComfyUI starts flows at x_1 = 1 * noise + 0 * latent."""
        with torch.inference_mode():
            positive, _, latent = self._encode(lr_bchw)
            guider = self.comfy_samplers.CFGGuider(self.model)
            guider.inner_set_conds({"positive": positive})
            guider.set_cfg(1.0)
            sigmas = self.comfy_samplers.calculate_sigmas(self.model.get_model_object("model_sampling"), "simple",
                                                          steps)
            samples = latent["samples"]
            source = lr_source(samples, self.net.source_noise, torch.Generator().manual_seed(0))
            out = guider.sample(source, samples, self.comfy_samplers.sampler_object("euler"), sigmas, seed=0,
                                disable_pbar=True)
            return bhwc_to_bchw(self.decode_sr(self.vae, {**latent, "samples": out}))

    def _encode(self, lr_bchw):
        return self.condition(bchw_to_bhwc(lr_bchw), self.vae, float(SCALE), 0, 0, "bicubic", False, 1024)


# ---------------------------------------------------------------- sections


def paired_ratio(stats: dict, numerator: str, denominator: str, key: str = "runs") -> float:
    """Median over the interleaved repeats of numerator / denominator: each pair ran back to back,
    under about the same load from other processes."""
    return statistics.median(a / b for a, b in zip(stats[numerator][key], stats[denominator][key]))


def overhead(session: ComfySession, sides: list[int], repeats: int) -> list[dict]:
    """Section 1: one-click node vs the bare work, for LR inputs of each side (x4 outputs); the
    node with its automatic tile once, at the smallest side."""
    rows = []
    photo = held_out_image("skimage/chelsea.png", 1024)
    for side in sides:
        lr = bicubic_upscale(photo, 8)[..., :side, :side].contiguous()  # a photo, as large as needed
        stats = time_interleaved({"node": lambda: session.node(lr), "pipeline": lambda: session.pipeline(lr),
                                  "network": session.network_only(lr),
                                  "node_comfy_sampler": lambda: session.node(lr, hooked=True)}, repeats)
        row = {"output": side * SCALE, **{f"{name}_s": entry["best"] for name, entry in stats.items()},
               **{f"{name}_cpu_s": entry["cpu_best"] for name, entry in stats.items()},
               "node_over_pipeline": paired_ratio(stats, "node", "pipeline"),
               "node_over_network": paired_ratio(stats, "node", "network"),
               "comfy_sampler_over_pipeline": paired_ratio(stats, "node_comfy_sampler", "pipeline"),
               "cpu_node_over_pipeline": paired_ratio(stats, "node", "pipeline", "cpu_runs"),
               "max_abs_difference": (stats["node"]["result"] - stats["pipeline"]["result"]).abs().max().item(),
               "runs": {name: entry["runs"] for name, entry in stats.items()}}
        if side == min(sides):
            session.counter.reset()
            auto = time_runs(lambda: session.node(lr, auto_tile=True), 1, 0)
            row.update(auto_tile_s=auto["best"], auto_tile_evaluations=session.counter.calls,
                       auto_tile_over_pipeline=auto["best"] / stats["pipeline"]["best"])
        rows.append(row)
    return rows


def steps_comparison(session: ComfySession, keys, size: int, denoise: float, repeats: int) -> dict:
    """Section 2: the one-step node vs ComfyUI's stock samplers at MULTI_STEPS steps, same model."""
    methods = {
        "one-step node": lambda lr: session.node(lr, 1),
        f"stock euler {MULTI_STEPS} steps from the LR": lambda lr: session.stock_euler_from_lr(lr, MULTI_STEPS),
        f"stock KSampler euler {MULTI_STEPS} steps, denoise {denoise}":
            lambda lr: session.stock_ksampler(lr, MULTI_STEPS, denoise),
    }
    per_method = {name: {"PSNR": [], "SSIM": [], "seconds": [], "cpu_seconds": [], "evaluations": 0}
                  for name in methods}
    for key in keys:
        hr = held_out_image(key, size)
        lr = bicubic_downscale(hr, SCALE)
        for name, method in methods.items():
            session.counter.reset()
            stats = time_interleaved({name: lambda: method(lr)}, repeats, warmup=0)[name]
            sr = stats["result"]
            per_method[name]["PSNR"].append(psnr(sr, hr))
            per_method[name]["SSIM"].append(ssim(sr, hr))
            per_method[name]["seconds"].append(stats["best"])
            per_method[name]["cpu_seconds"].append(stats["cpu_best"])
            per_method[name]["evaluations"] = session.counter.calls // max(repeats, 1)
    return per_method


def guidance_cost(session: ComfySession, side: int, steps: int, repeats: int) -> dict:
    """Section 3: guidance (weight GUIDANCE_WEIGHT, positive and negative batched) vs none."""
    lr = bicubic_upscale(held_out_image("sklearn/china.jpg", 1024), 8)[..., :side, :side].contiguous()
    counts = {}
    for name, weight in (("no guidance", 1.0), ("guidance", GUIDANCE_WEIGHT)):
        session.counter.reset()
        session.node(lr, steps, weight)
        counts[name] = {"calls": session.counter.calls, "items": session.counter.items}
    stats = time_interleaved({"no guidance": lambda: session.node(lr, steps, 1.0),
                              "guidance": lambda: session.node(lr, steps, GUIDANCE_WEIGHT)}, repeats)
    return {"output": side * SCALE, "steps": steps, "weight": GUIDANCE_WEIGHT,
            "seconds": {k: v["best"] for k, v in stats.items()}, "cpu_seconds": {k: v["cpu_best"] for k, v in stats.items()},
            "evaluations": counts, "ratio": paired_ratio(stats, "guidance", "no guidance"),
            "cpu_ratio": paired_ratio(stats, "guidance", "no guidance", "cpu_runs")}
