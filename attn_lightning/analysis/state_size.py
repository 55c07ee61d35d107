"""The bytes a decoding state holds: what a variant keeps per sequence between generation
steps (a KV cache grows with the context, a recurrent state does not). Counted from the cache
objects the decoder actually builds, whatever their layout, so no variant reports its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn


def held_tensors(obj: Any, seen: set[int] | None = None) -> Iterator[Tensor]:
    """Every tensor an object holds, through attributes, slots, containers and nested
    objects (modules excluded: a cache that points back at its layer does not own its
    weights); each object visited once."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, nn.Module):
        return
    seen.add(id(obj))
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from held_tensors(value, seen)
    elif isinstance(obj, list | tuple | set | frozenset):
        for value in obj:
            yield from held_tensors(value, seen)
    else:
        for name in getattr(type(obj), "__slots__", ()):
            yield from held_tensors(getattr(obj, name, None), seen)
        for value in getattr(obj, "__dict__", {}).values():
            yield from held_tensors(value, seen)


def cache_bytes(cache: Any) -> int:
    """Bytes of the tensors the cache holds (each tensor once; a view counts its own
    elements, the state it represents, not the buffer it may sit in)."""
    return sum(t.numel() * t.element_size() for t in held_tensors(cache))
