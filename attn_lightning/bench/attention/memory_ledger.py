"""Peak memory of one call: CUDA's allocator statistics on GPU, a ledger of the storages
operators return on CPU.

The CPU ledger is a dispatch mode keeping live bytes and their peak: it counts tensors
(activations saved for the backward, outputs, gradients) but not scratch buffers a kernel
allocates and frees inside itself, nor allocator overhead. (RSS would measure glibc's reuse of
freed pages instead.)
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode


class StorageLedger(TorchDispatchMode):
    """Live and peak bytes of the storages operators allocate while the mode is on.

    An output storage that is not among the operator's inputs is new memory (views and
    in-place results share an input's storage); a weak-reference finaliser takes it off the
    books when the storage is freed. Tensors that existed before are never counted."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: weakref.WeakSet = weakref.WeakSet()

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in _tensors((args, kwargs))}
        for tensor in _tensors(out):
            storage = tensor.untyped_storage()
            if id(storage) in inputs or storage in self._seen:
                continue
            self._seen.add(storage)
            self.live += storage.nbytes()
            weakref.finalize(storage, self._free, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


def _tensors(tree: Any) -> list[Tensor]:
    """The tensors in nested tuples/lists/dicts of operator arguments or results."""
    if isinstance(tree, Tensor):
        return [tree]
    if isinstance(tree, (tuple, list)):
        return [t for item in tree for t in _tensors(item)]
    if isinstance(tree, dict):
        return [t for item in tree.values() for t in _tensors(item)]
    return []


def peak_memory(call: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated during one call beyond what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with StorageLedger() as ledger:
        call()
    return ledger.peak
