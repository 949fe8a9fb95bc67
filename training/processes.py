"""The trainer's own multi-process path ("manual" engine): the processes start from rank 0's weights and
average their gradients by all-reduce. It exists because DistributedDataParallel's forward cannot run inside
torch.func.jvp (MeanFlow, Lagrangian, Eulerian differentiate the network forward-mode); objectives that only
call the network can instead run under accelerate's own wrapping (TrainConfig.engine = "accelerate")."""

from __future__ import annotations

import torch


def broadcast_state(modules, world: int) -> None:
    """Every process starts from rank 0's weights and buffers (EMA included)."""
    if world == 1:
        return
    with torch.no_grad():
        for module in filter(None, modules):
            for tensor in [*module.parameters(), *module.buffers()]:
                torch.distributed.broadcast(tensor.data, src=0)


def average_gradients(net: torch.nn.Module, world: int, bucket_elements: int = 1 << 24) -> None:
    """All-reduce the gradients to their mean over processes, in flat buckets."""
    if world == 1:
        return
    params = [p for p in net.parameters() if p.requires_grad]
    for p in params:  # a parameter unused on one rank must still take part in the reduction
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket, size = [], 0
    for i, p in enumerate(params):
        bucket.append(p.grad)
        size += p.grad.numel()
        if size >= bucket_elements or i == len(params) - 1:
            flat = torch.cat([g.reshape(-1) for g in bucket])
            torch.distributed.all_reduce(flat)
            flat /= world
            offset = 0
            for g in bucket:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
            bucket, size = [], 0
