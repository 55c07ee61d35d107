"""Decoding caches: what an attention layer keeps between generation steps.

Each layer owns one cache object per generation (created by `CausalSelfAttention.new_cache`);
`length` counts the tokens the layer has seen, so the next token's absolute position is
`length`. The softmax family keeps keys and values (`KVCache`); kernel variants keep a
constant-size recurrent state (`LinearAttentionState` in linear_kernel.py).
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Keys and values of the last `max_len` positions, (B, H_kv, T_cached, D).

    Stored before heads are repeated, so grouped/multi-query attention caches only its
    n_kv_head heads. The cached positions are always the contiguous range
    `length - T_cached .. length - 1`.
    """

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.length = 0
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Append new (B, H_kv, T, D) keys/values. Returns the keys and values the new queries
        may look at (old cache + new tokens, before cropping) and their absolute positions."""
        self.length += k.size(2)
        if self.k is not None:
            k, v = torch.cat((self.k, k), dim=2), torch.cat((self.v, v), dim=2)
        self.k, self.v = k[:, :, -self.max_len :], v[:, :, -self.max_len :]
        positions = torch.arange(self.length - k.size(2), self.length, device=k.device)
        return k, v, positions


class QKVCache(KVCache):
    """A KVCache that also keeps queries: for variants whose core is recomputed over the
    whole cached window at every step (their output at a position is not a function of a
    per-key cache alone, e.g. segment-compressed Linformer/Nyströmformer)."""

    def __init__(self, max_len: int) -> None:
        super().__init__(max_len)
        self.q: Tensor | None = None

    def update_q(self, q: Tensor) -> Tensor:
        self.q = q if self.q is None else torch.cat((self.q, q), dim=2)[:, :, -self.max_len :]
        return self.q
