"""Exact tensor-memory accounting on any device, the CPU included (where torch keeps no allocator statistics
and tracemalloc does not see its buffers): a TorchDispatchMode sees every tensor an operation makes, forward,
backward (autograd runs the backward's operations under the same thread-local mode) and optimizer steps alike.

A storage is counted when an operation returns it and none of the operation's inputs held it (views and
in-place results share their input's storage and are not new memory), and uncounted when torch frees it
(a weak reference's callback). Tensors that exist before the measurement (weights, data) are registered as
`static`. The figure is the bytes of live tensor storages: what a caching allocator must at least hold;
its rounding, fragmentation and the workspace of kernels (cuBLAS, cuDNN) come on top on a GPU.

    with TensorMemory(static=[*net.parameters(), batch]) as memory:
        loss = objective(net, batch); loss.backward(); optimizer.step()
    memory.peak_bytes          # static + the highest live total reached
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

MIB = 2 ** 20


def _storages(values):
    for value in tree_flatten(values)[0]:
        if isinstance(value, torch.Tensor):
            yield value.untyped_storage()


class TensorMemory(TorchDispatchMode):
    """Live and peak bytes of tensor storages made while the mode is on (see the module docstring)."""

    def __init__(self, static=()):
        super().__init__()
        self.static: dict[int, int] = {}
        for storage in _storages(list(static)):
            if storage.nbytes():
                self.static[storage.data_ptr()] = storage.nbytes()
        self.live: dict[int, tuple[weakref.ref, int]] = {}
        self.current = 0
        self.dynamic_peak = 0

    @property
    def static_bytes(self) -> int:
        return sum(self.static.values())

    @property
    def peak_bytes(self) -> int:
        return self.static_bytes + self.dynamic_peak

    def _freed(self, key: int, nbytes: int):
        def callback(_reference):
            if self.live.get(key, (None, None))[1] is not None:
                self.live.pop(key)
                self.current -= nbytes
        return callback

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {storage.data_ptr() for storage in _storages((args, kwargs))}
        for storage in _storages(out):
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if not nbytes or key in inputs or key in self.live or key in self.static:
                continue
            self.live[key] = (weakref.ref(storage, self._freed(key, nbytes)), nbytes)
            self.current += nbytes
            self.dynamic_peak = max(self.dynamic_peak, self.current)
        return out


def module_bytes(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Bytes of a module's parameters (and buffers unless trainable_only)."""
    tensors = [p for p in module.parameters() if p.requires_grad or not trainable_only]
    if not trainable_only:
        tensors += list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
