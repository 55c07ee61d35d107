"""Decoding caches: what an attention layer keeps between generation steps.

Each layer owns one cache object per generation (created by `CausalSelfAttention.new_cache`);
`length` counts the tokens the layer has seen, so the next token's absolute position is
`length`. The softmax family keeps keys and values (`KVCache`); kernel variants keep a
constant-size recurrent state (`LinearAttentionState` in linear_kernel.py).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _extend(cached: Tensor | None, new: Tensor, max_len: int) -> Tensor:
    """`cached` (B, H, n, D), a view of the first n of max_len slots of its own storage, with
    `new` (B, H, T, D) written after it in place (n + T <= max_len): the view of n + T slots.
    The first write allocates the storage and copies into it, so the cache never keeps the
    larger tensor its keys are a view of (the prefill's fused q/k/v projection)."""
    if cached is None:
        B, H, _, D = new.shape
        cached = new.new_empty(B, H, max_len, D)[:, :, :0]
    B, H, n, D = cached.shape
    # the same storage and strides, n + T slots long: no copy of the n cached positions
    grown = cached.as_strided((B, H, n + new.size(2), D), cached.stride())
    grown[:, :, n:].copy_(new)
    return grown


class KVCache:
    """Keys and values of the last `max_len` positions, (B, H_kv, T_cached, D).

    Stored before heads are repeated, so grouped/multi-query attention caches only its
    n_kv_head heads. The cached positions are always the contiguous range
    `length - T_cached .. length - 1`.

    `k` and `v` are views of preallocated storage of max_len positions, and a new token is
    written in place (one copy of the token, not of the cache, per step). The views are the
    cache's only references to that storage, so what it holds reads as the positions it keeps
    (analysis/state_size.py counts a view's own elements).
    """

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.length = 0
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append new (B, H_kv, T, D) keys/values. Returns the keys and values the new queries
        may look at (old cache + new tokens, before cropping to max_len), positions
        `key_positions(...)`."""
        self.length += k.size(2)
        cached = 0 if self.k is None else self.k.size(2)
        if cached + k.size(2) <= self.max_len:
            self.k, self.v = _extend(self.k, k, self.max_len), _extend(self.v, v, self.max_len)
            return self.k, self.v
        # past max_len (a sliding window): the new queries see old + new, the cache keeps the
        # last max_len, copied to the start of the storage
        if self.k is not None:
            k, v = torch.cat((self.k, k), dim=2), torch.cat((self.v, v), dim=2)
        keep_k, keep_v = k[:, :, -self.max_len :], v[:, :, -self.max_len :]
        self.k = _extend(None if self.k is None else self.k[:, :, :0], keep_k, self.max_len)
        self.v = _extend(None if self.v is None else self.v[:, :, :0], keep_v, self.max_len)
        return k, v

    def key_positions(self, num_keys: int, device: torch.device) -> Tensor:
        """Absolute positions of the `num_keys` keys the last `update` returned."""
        return torch.arange(self.length - num_keys, self.length, device=device)


class QKVCache(KVCache):
    """A KVCache that also keeps queries: for variants whose core is recomputed over the
    whole cached window at every step (their output at a position is not a function of a
    per-key cache alone, e.g. segment-compressed Linformer/Nyströmformer)."""

    def __init__(self, max_len: int) -> None:
        super().__init__(max_len)
        self.q: Tensor | None = None

    def update_q(self, q: Tensor) -> Tensor:
        """Append new (B, H, T, D) queries; the queries of the cached window (at most
        max_len, in place while they fit, as keys and values)."""
        cached = 0 if self.q is None else self.q.size(2)
        if cached + q.size(2) <= self.max_len:
            self.q = _extend(self.q, q, self.max_len)
        else:
            q = q if self.q is None else torch.cat((self.q, q), dim=2)
            self.q = _extend(None, q[:, :, -self.max_len :], self.max_len)
        return self.q


class TensorLength:
    """`length` kept in `length_tensor`, a (1,) long tensor advanced in place: for the caches of
    compiled decoding. A compiled step guards on the value of every Python int it reads, so a
    count that changes per token would recompile the step at every token; a tensor is guarded
    on its shape only. Before a step, `length_tensor` is the new token's position."""

    length_tensor: Tensor | None = None

    @property
    def length(self) -> int:
        """Tokens seen (a read of the tensor: for the host, not for the compiled step)."""
        return 0 if self.length_tensor is None else int(self.length_tensor)

    def advance(self, num_tokens: int, device: torch.device) -> None:
        if self.length_tensor is None:
            self.length_tensor = torch.zeros(1, dtype=torch.long, device=device)
        self.length_tensor += num_tokens

    def hold(self, slots: Tensor) -> None:
        """Before a compiled step: `slots` (n,), the positions 0..n-1 its keys span, given by
        the host (which knows the count without reading the tensor). A recurrent state of
        fixed size has no use for it (the default)."""


class StaticKVCache(TensorLength):
    """A KVCache of fixed-shape storage, for compiled decoding (pytorch-labs/gpt-fast's design):
    keys and values live in (B, H_kv, max_len, D) buffers allocated at the first update, and new
    tokens are written at their positions (`index_copy_` at a position tensor, no Python int).

    `update` returns views of the first n slots, the positions held after it: n is the size of
    the `hold` tensor the decoder passed (a dynamic size of the compiled step, so the step reads
    only the keys it attends to, not all max_len), or, eagerly, the count itself. Queries at
    `query_positions` against keys at `key_positions` are masked by the attention's own causal
    mask (a prefill's queries see only the keys before them). No sliding window: positions past
    max_len are an error (the decoder checks before a step).
    """

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.slots: Tensor | None = None  # (max_len,) 0, 1, ..., max_len - 1
        self.written: Tensor | None = None  # (T,) positions of the last update's tokens
        self.held: Tensor | None = None  # (n,) slots the next update returns (`hold`)

    def hold(self, slots: Tensor) -> None:
        self.held = slots

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write new (B, H_kv, T, D) keys/values at the next T positions; returns the keys and
        values of the positions held, (B, H_kv, n, D) views of the buffers."""
        if self.k is None:
            B, H, _, D = k.shape
            self.k, self.v = k.new_zeros(B, H, self.max_len, D), v.new_zeros(B, H, self.max_len, D)
            self.slots = torch.arange(self.max_len, device=k.device)
        assert self.v is not None and self.slots is not None
        T = k.size(2)
        start = self.slots[:1] if self.length_tensor is None else self.length_tensor
        self.written = start + self.slots[:T]  # (T,)
        self.k.index_copy_(2, self.written, k)
        self.v.index_copy_(2, self.written, v)
        self.advance(T, k.device)
        held, self.held = self.held, None  # a hint for this update only
        n = self.length if held is None else held.size(0)
        return self.k[:, :, :n], self.v[:, :, :n]

    def query_positions(self) -> Tensor:
        """Positions (T,) of the tokens the last `update` wrote: the queries'."""
        assert self.written is not None
        return self.written

    def key_positions(self, num_keys: int, device: torch.device) -> Tensor:
        """Positions (num_keys,) of the keys `update` returned: slots 0.. ."""
        assert self.slots is not None
        return self.slots[:num_keys]
