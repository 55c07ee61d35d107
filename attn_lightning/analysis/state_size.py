"""The bytes a decoding state holds: what a variant keeps per sequence between generation
steps (a KV cache grows with the context, a recurrent state does not). Counted from the cache
objects the decoder actually builds, whatever their layout, so no variant reports its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from attn_lightning.attention.base import CausalSelfAttention
from attn_lightning.model.gpt import GPT


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


def _new_caches(model: GPT | CausalSelfAttention) -> list[Any]:
    """The caches the decoder starts from: one per layer of a GPT (`IncrementalDecoder`
    calls `new_caches`), the layer's own for a single attention module."""
    return model.new_caches() if isinstance(model, GPT) else [model.new_cache()]


def _context(model: GPT | CausalSelfAttention, batch_size: int, length: int) -> Tensor:
    """Random inputs of the model's kind: token ids (B, T) for a GPT, (B, T, C) for a layer."""
    weight = next(model.parameters())
    generator = torch.Generator(weight.device).manual_seed(0)
    if isinstance(model, GPT):
        shape = (batch_size, length)
        return torch.randint(model.vocab_size, shape, generator=generator, device=weight.device)
    shape = (batch_size, length, model.n_embd)
    return torch.randn(shape, generator=generator, device=weight.device, dtype=weight.dtype)


def decoding_state_bytes(
    model: GPT | CausalSelfAttention, context_length: int, batch_size: int = 1
) -> int:
    """Bytes per sequence of the decoding state once the model has read `context_length`
    tokens: every layer's cache (a hybrid stack's layers each their own kind), as the
    incremental decoder builds it (`new_caches`, then the prompt in one call: its prefill),
    in the dtype the model decodes in outside autocast. Measured on `batch_size` sequences
    and divided: a total that is no multiple of the batch is an error, not an average."""
    limit = model.block_size
    if not 1 <= context_length <= limit:
        raise ValueError(f"context_length={context_length} must be in 1..block_size={limit}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    caches = _new_caches(model)
    was_training = model.training
    model.eval()  # no dropout, no training-time side effects (Performer's redraw)
    try:
        with torch.no_grad():
            inputs = _context(model, batch_size, context_length)
            if isinstance(model, GPT):
                model(inputs, caches=caches)
            else:
                model(inputs, cache=caches[0])
    finally:
        model.train(was_training)
    per_sequence, shared = divmod(cache_bytes(caches), batch_size)
    if shared:
        raise ValueError(
            f"the decoding caches of {type(model).__name__} hold {cache_bytes(caches)} bytes "
            f"for a batch of {batch_size}: not a whole number of bytes per sequence"
        )
    return per_sequence
