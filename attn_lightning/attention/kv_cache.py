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
