"""Linformer (Wang et al. 2020), made causal by compressing only completed past segments.

Linformer projects the n keys and values along the sequence to k rows, K' = E K, V' = F V
(E, F: k x n, learned; here `key_compression` and `value_compression`), and attends
softmax(Q K'^T / sqrt(d)) V'. Every row of E mixes all n
positions, including the future: used as-is in a language model, position i reads tokens after
i (and its loss looks far better than it is).

Causal form here: E and F are block-diagonal. The block of n = block_size positions is cut into
k = num_segments segments of s = n / k positions; segment l is compressed to one key/value pair,

    k'_l = Σ_{j in seg l} E_{l, j - ls} k_j,     v'_l = Σ_{j in seg l} F_{l, j - ls} v_j,

and query i, in segment g = i // s, attends with one softmax to the compressed pairs of the
completed segments l < g and, exactly, to the keys j of its own segment with j <= i:

    y_i = Σ_{l<g} a_il v'_l + Σ_{gs<=j<=i} a_ij v_j,   a_i = softmax([q_i·k'_l]_{l<g}, [q_i·k_j]_j)

What it approximates: Linformer's low-rank premise, applied to the past only (each completed
segment of s tokens is seen through one learned summary); what it gives up: exact access to any
single past token outside the current segment; cost O(n (k + s)) instead of Linformer's
O(n k) (segments.py). The equivalent matrix (materialised for `return_attn`) puts
a_il F_{l, j-ls} on each past j: its rows do not sum to 1 (F is a free linear map, as in the
paper). The constructor refuses num_segments that does not divide block_size. Decoding uses the
base's fallback: cache q, k, v and recompute the core over the window.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.functional import pad

from attn_lightning.attention.base import CausalSelfAttention
from attn_lightning.attention.segments import segment_attention, segment_weights
from attn_lightning.errors import ConfigError


class LinformerAttention(CausalSelfAttention):
    """Causal Linformer: learned per-segment compression of the past + exact current segment."""

    def __init__(self, *args: Any, num_segments: int = 8, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        n = num_segments
        if not 1 <= n <= self.block_size or self.block_size % n != 0:
            raise ConfigError(
                f"causal Linformer cuts block_size={self.block_size} into num_segments={n} "
                "segments: choose attention.num_segments dividing model.block_size"
            )
        self.num_segments = n
        self.segment = s = self.block_size // n
        # E and F of the paper, (num_segments, s): row l weighs the positions of segment l
        self.key_compression = nn.Parameter(torch.randn(n, s) / math.sqrt(s))
        self.value_compression = nn.Parameter(torch.randn(n, s) / math.sqrt(s))

    def _compress(self, x: Tensor, weights: Tensor) -> Tensor:
        """Completed segments of (B, H, T, D) -> one row each, (B, H, n_full, D)."""
        B, H, T, D = x.shape
        n_full = T // self.segment
        segments = x[:, :, : n_full * self.segment].view(B, H, n_full, self.segment, D)
        return (weights[:n_full, :, None] * segments).sum(3)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None) -> Tensor:
        k_c = self._compress(k, self.key_compression)  # (B, H, n_full, D)
        v_c = self._compress(v, self.value_compression)
        return segment_attention(q, k, v, k_c, v_c, self.segment, dropout_p=self.dropout_p)

    def attention_matrix(self, q: Tensor, k: Tensor, g: Tensor | None = None) -> Tensor:
        T = q.size(2)
        w_c, w_l = segment_weights(q, k, self._compress(k, self.key_compression), self.segment)
        n_full = w_c.size(-1)
        rows = self.value_compression[:n_full, None, :]  # (n_full, 1, s)
        spread = torch.block_diag(*rows) if n_full else w_c.new_zeros(0, 0)
        spread = pad(spread, (0, T - spread.size(1)))  # (n_full, T): F placed on its segment
        return w_l + w_c @ spread
