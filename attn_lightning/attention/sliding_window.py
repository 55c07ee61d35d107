"""Sliding-window (local) attention (e.g. Longformer's local band, Mistral): each query sees
only the last `window` positions, itself included.

    M_ij = 0 if i - window < j <= i else -inf

Training cuts the queries into blocks of `window` and gives each block the 2 window - 1 keys
ending at its last query, all blocks in one SDPA call with one (window, 2 window - 1) band mask
and the first block's missing keys masked: scores and memory O(T window), not the (T, T) mask
(the weights shown still use it). Decodes with a KV cache that keeps only the last `window`
keys and values.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attn_lightning.attention.kv_cache import KVCache
from attn_lightning.attention.vanilla import VanillaAttention
from attn_lightning.errors import ConfigError


class SlidingWindowAttention(VanillaAttention):
    """Causal softmax attention restricted to a local window."""

    def __init__(self, *args: Any, window: int = 16, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if window < 1:
            raise ConfigError(f"attention.window must be >= 1, got {window}")
        self.window = window

    def allowed(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        distance = q_pos[:, None] - k_pos[None, :]  # (Tq, Tk)
        return (distance >= 0) & (distance < self.window)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None) -> Tensor:
        if type(self).allowed is not SlidingWindowAttention.allowed or q.size(2) <= self.window:
            return super().attend(q, k, v, g)  # a subclass's own mask; or every key in reach
        return banded_attention(q, k, v, self.window, self.dropout_p)

    def _new_core_cache(self) -> KVCache:
        return KVCache(min(self.window, self.block_size))


def banded_attention(
    q: Tensor, k: Tensor, v: Tensor, window: int, dropout_p: float = 0.0
) -> Tensor:
    """softmax over the keys i - window < j <= i, q, k, v (B, H, T, d) -> (B, H, T, d). Block n
    holds queries n W .. n W + W - 1 (W = window; T padded to a multiple) and keys
    n W - (W - 1) .. n W + W - 1 (k, v padded with W - 1 positions in front): query r of a block
    sees its keys r .. r + W - 1. The front padding is masked in the first block only."""
    B, H, T, d = q.shape
    W, n = window, math.ceil(q.size(2) / window)
    end = n * W - T
    queries = F.pad(q, (0, 0, 0, end)).reshape(B * H, n, W, d)  # 4-D: SDPA's fused CPU kernel

    def windows(x: Tensor) -> Tensor:  # (B, H, T, d) -> (B H, n, 2 W - 1, d)
        x = F.pad(x, (0, 0, W - 1, end)).unfold(2, 2 * W - 1, W).transpose(-1, -2)
        return x.reshape(B * H, n, 2 * W - 1, d)

    r, m = torch.arange(W, device=q.device)[:, None], torch.arange(2 * W - 1, device=q.device)
    band = (m >= r) & (m <= r + W - 1)  # (W, 2 W - 1)
    allowed = band.expand(n, W, 2 * W - 1).clone()
    allowed[0] &= m >= W - 1  # block 0's keys before position 0 are padding
    mask = torch.zeros(1, n, W, 2 * W - 1, dtype=q.dtype, device=q.device)
    mask.masked_fill_(~allowed, -math.inf)  # 4-D, as the fused kernel takes a mask
    out = F.scaled_dot_product_attention(queries, windows(k), windows(v), mask, dropout_p)
    return out.reshape(B, H, n * W, d)[:, :, :T]
