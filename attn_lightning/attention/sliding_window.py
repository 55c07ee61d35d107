"""Sliding-window (local) attention (e.g. Longformer's local band, Mistral): each query sees
only the last `window` positions, itself included.

    M_ij = 0 if i - window < j <= i else -inf

Decodes with a KV cache that keeps only the last `window` keys and values.
"""

from __future__ import annotations

from typing import Any

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

    def _new_core_cache(self) -> KVCache:
        return KVCache(min(self.window, self.block_size))
