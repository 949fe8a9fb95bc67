"""The trainer's state under an engine that shards the net (FSDP2 through accelerate's plugin): full
(unsharded) weights and optimizer state in and out of checkpoints, the parameters gathered for the EMA update
and the exports, and the launch config's FSDP fitted to the net and to CPU (gloo) processes.

Checkpoints stay what a one-process run writes (training/checkpoint.py): the full state_dict and the optimizer
state keyed by the index of each trainable parameter, the same under every engine (resuming under another
engine or world size is untested).
"""

from __future__ import annotations

import contextlib
import os

import torch


def enable_fsdp(accelerator, net: torch.nn.Module) -> None:
    """Before `accelerator.prepare`: honour an FSDP launch config on CPU processes and wrap only the blocks the net has.

    accelerate 1.16 keeps FSDP for GPU-like devices only and silently trains CPU (gloo) processes under DDP when
    the launch config says FSDP; torch's FSDP2 (`fully_shard`) shards CPU tensors over gloo, so the trainer
    turns it on there itself (FSDP2 only: FSDP1 on CPU is untested). accelerate also raises `Could not find the
    transformer layer class X in the model` for every class of fsdp_transformer_layer_cls_to_wrap the net lacks,
    and the shipped configs name FLUX's and Qwen-Image's blocks together: the list is cut to the classes present
    (none: the net is sharded as one unit)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if (state.distributed_type == DistributedType.MULTI_CPU
            and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"):
        plugin = FullyShardedDataParallelPlugin()  # from the launch config's FSDP_* variables
        if plugin.fsdp_version != 2:
            raise ValueError("FSDP on CPU processes needs fsdp_version: 2 in the launch config (FSDP2's "
                             "fully_shard shards CPU tensors over gloo; FSDP1 there is untested)")
        state.distributed_type, state.fsdp_plugin = DistributedType.FSDP, plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as AcceleratorState does on GPUs
    if state.distributed_type != DistributedType.FSDP:
        return
    plugin = state.fsdp_plugin
    names = plugin.transformer_cls_names_to_wrap
    if names:
        present = {type(m).__name__ for m in net.modules()}
        plugin.transformer_cls_names_to_wrap = [name for name in names if name in present]


def is_fsdp2(accelerator) -> bool:
    return bool(getattr(accelerator, "is_fsdp2", False))


def refuse_unsharded_checkpoints(accelerator) -> None:
    """DeepSpeed partitions the optimizer state; gathering it is not written (nor testable here: no deepspeed)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise NotImplementedError("checkpoints under DeepSpeed would hold only the main process's optimizer "
                                  "partition (untested, deepspeed not installed here); use FSDP (fsdp_version 2) "
                                  "or DDP with engine 'accelerate', or engine 'manual'")
    if accelerator.distributed_type == DistributedType.FSDP and not is_fsdp2(accelerator):
        raise NotImplementedError("checkpoints under FSDP1 are not written by this trainer; use fsdp_version: 2")


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


@contextlib.contextmanager
def gathered(accelerator, net: torch.nn.Module):
    """The net's full parameters as plain tensors inside the block (FSDP2's DTensor shards all-gathered, in the
    same order on every process, which must all enter), e.g. to update the EMA or to read a LoRA's weights;
    the shards are put back after it. Otherwise nothing happens."""
    if not is_fsdp2(accelerator):
        yield net
        return
    from torch.distributed.tensor import DTensor

    swapped = []
    with torch.no_grad():
        for module in net.modules():
            for name, param in list(module._parameters.items()):
                if isinstance(param, DTensor):
                    full = torch.nn.Parameter(param.full_tensor(), requires_grad=param.requires_grad)
                    module._parameters[name] = full
                    swapped.append((module, name, param))
    try:
        yield net
    finally:
        for module, name, param in swapped:
            module._parameters[name] = param


def model_state(accelerator, net: torch.nn.Module, engine_net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full state_dict of the net (on every process: an engine that shards it gathers)."""
    if is_fsdp2(accelerator):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(net, options=_options(cpu_offload=False))
    if engine_net is not net:
        return accelerator.get_state_dict(engine_net)
    return net.state_dict()


def load_model_state(accelerator, net: torch.nn.Module, state: dict[str, torch.Tensor]):
    """Load a full (possibly partial: frozen parameters left out) state_dict; (missing, unexpected) keys."""
    if is_fsdp2(accelerator):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        own = set(net.state_dict())
        result = set_model_state_dict(net, state, options=_options(strict=False))
        return sorted(own - set(state)), sorted(set(result.unexpected_keys))
    return net.load_state_dict(state, strict=False)


def _trainable_names(net: torch.nn.Module) -> list[str]:
    return [name for name, p in net.named_parameters() if p.requires_grad]  # the optimizer's parameter order


def optimizer_state(accelerator, net: torch.nn.Module, optimizer) -> dict:
    """The full optimizer state_dict keyed by parameter index (what one process's optimizer.state_dict() is)."""
    if not is_fsdp2(accelerator):
        refuse_unsharded_checkpoints(accelerator)  # DeepSpeed, FSDP1: a shard would be written as the whole
        return optimizer.optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    full = get_optimizer_state_dict(net, optimizer.optimizer, options=_options(cpu_offload=False))
    index = {name: i for i, name in enumerate(_trainable_names(net))}
    return {"state": {index[name]: value for name, value in full["state"].items()},
            "param_groups": [{**group, "params": [index[name] for name in group["params"]]}
                             for group in full["param_groups"]]}


def load_optimizer_state(accelerator, net: torch.nn.Module, optimizer, state: dict) -> None:
    """The inverse of `optimizer_state` (every process loads the full state; FSDP2 keeps its shard)."""
    if not is_fsdp2(accelerator):
        optimizer.optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = _trainable_names(net)
    full = {"state": {names[int(i)]: value for i, value in state["state"].items()},
            "param_groups": [{**group, "params": [names[int(i)] for i in group["params"]]}
                             for group in state["param_groups"]]}
    set_optimizer_state_dict(net, optimizer.optimizer, optim_state_dict=full, options=_options())
