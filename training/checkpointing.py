"""Gradient checkpointing on a network's blocks (torch.utils.checkpoint, non-reentrant): a block keeps only its
inputs for the backward pass and recomputes its activations there, trading one more forward of the blocks
for their activation memory. The values and gradients are those of the plain network (same operations, same
order; dropout would replay the same mask, torch saves and restores the RNG state). A block runs on copies of
its tensor inputs, since ComfyUI's blocks update them in place, which would change what the recomputation sees.

    handles = checkpoint_blocks(net, "auto")     # every block of the net's ModuleLists (e.g. FLUX's
    ...                                          # double_blocks / single_blocks, the default model's blocks)
    release_blocks(handles)                      # the blocks' own forward again

`names` is "auto" or comma-separated module paths (suffixes): a ModuleList among them stands for its
children. The wrapper is an instance attribute over the class's forward, so releasing it leaves the module
exactly as it was (a ComfyUI MODEL trained in place is handed back unchanged).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

# the objectives that differentiate the network forward-mode (torch.func.jvp): checkpoint's recomputation in the
# backward does not replay the dual tensors (tried on meanflow, torch 2.14: "CheckpointError: A different number
# of tensors was saved during the original forward and recomputation", 41 and 10), so the trainer refuses them
JVP_OBJECTIVES = ("meanflow", "lagrangian", "eulerian")


# Blocks that update a tensor in place after autograd saved it (ComfyUI's FLUX DoubleStreamBlock: `img += ...`
# after img_norm2 saved img). The native trainer's saved-tensor hook copies such tensors in the plain forward,
# but checkpoint's recomputation saves them by reference, so the gradients come out wrong (tiny FLUX: 6.3e-4
# off, tests/test_gradient_checkpointing.py): "auto" leaves them out, naming them explicitly is an error.
IN_PLACE_BLOCKS = ("DoubleStreamBlock",)


def checkpointable_blocks(net: nn.Module, names: str) -> list[tuple[str, nn.Module]]:
    """The blocks `names` selects (see the module docstring); an empty selection is an error."""
    if names.strip() == "auto":
        lists = [(path, module) for path, module in net.named_modules() if isinstance(module, nn.ModuleList)]
        outer = [(p, m) for p, m in lists if not any(p != q and p.startswith(q + ".") for q, _ in lists)]
        blocks = [(f"{path}.{i}", child) for path, module in outer for i, child in enumerate(module)
                  if type(child).__name__ not in IN_PLACE_BLOCKS]
    else:
        wanted = [name.strip() for name in names.split(",") if name.strip()]
        blocks = []
        for path, module in net.named_modules():
            if path and any(path == name or path.endswith("." + name) for name in wanted):
                children = list(module) if isinstance(module, nn.ModuleList) else [module]
                blocks += [(f"{path}.{i}" if isinstance(module, nn.ModuleList) else path, child)
                           for i, child in enumerate(children)]
    refused = sorted({type(block).__name__ for _, block in blocks} & set(IN_PLACE_BLOCKS))
    if refused:
        raise ValueError(f"gradient checkpointing: {refused} update activations in place after autograd saved them, "
                         "which checkpoint's recomputation gets wrong (gradients 6.3e-4 off on tiny FLUX); checkpoint "
                         "the other blocks (FLUX: 'single_blocks', or 'auto', which leaves these out)")
    if not blocks:
        raise ValueError(f"gradient checkpointing: {type(net).__name__} has no block matching {names!r} "
                         "(give 'auto' for the children of its ModuleLists, or module paths such as "
                         "'double_blocks,single_blocks')")
    return blocks


def checkpoint_blocks(net: nn.Module, names: str = "auto") -> list[nn.Module]:
    """Wrap each selected block's forward in torch.utils.checkpoint; returns the blocks (for release_blocks)."""
    wrapped = []
    for _, block in checkpointable_blocks(net, names):
        if "forward" in block.__dict__:
            continue  # already wrapped (a block listed twice)
        original = type(block).forward.__get__(block)

        def on_copies(*args, _original=original, **kwargs):
            # ComfyUI's blocks update their inputs in place (FLUX: img += ...): the recomputation must start
            # from the inputs as they came, so the block works on copies (made again when recomputed)
            return _original(*[_copy(a) for a in args], **{k: _copy(v) for k, v in kwargs.items()})

        def forward(*args, _original=original, _on_copies=on_copies, **kwargs):
            if not torch.is_grad_enabled():
                return _original(*args, **kwargs)
            return checkpoint(_on_copies, *args, use_reentrant=False, **kwargs)

        block.forward = forward
        wrapped.append(block)
    return wrapped


def _copy(value):
    return value.clone() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def release_blocks(blocks: list[nn.Module]) -> None:
    for block in blocks:
        block.__dict__.pop("forward", None)
