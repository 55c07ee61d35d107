"""ALiBi (Press et al. 2021): no position embeddings; a linear distance penalty per head.

    M_ij = -m_h (i - j) for j <= i, -inf otherwise
    m_h = 2^(-8 h / n) for h = 1..n when n (heads) is a power of two; otherwise the n' = 2^floor(
    log2 n) slopes of n', followed by every other slope of 2n' until there are n (the paper's rule).

Use it with `model.pos_embedding=none` (ALiBi replaces position embeddings; with learned
embeddings as well it still works, it is just not ALiBi as published). Decodes with a KV cache.

M_ij = c_i - c_j with c_t = -m_h t: training in float32 or float64 passes the bias to SDPA's
fused kernel as one more head dimension, in blocks of `query_block` queries
(difference_bias.py), with no (T, T) tensor; half precision, the weights shown and decoding
use `score_bias`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from attn_lightning.attention.difference_bias import (
    checked_query_block,
    difference_bias_attention,
)
from attn_lightning.attention.vanilla import VanillaAttention


def alibi_slopes(n_head: int) -> Tensor:
    """The standard geometric head slopes, (n_head,)."""

    def power_of_2(n: int) -> list[float]:
        return [2 ** (-8 * h / n) for h in range(1, n + 1)]

    closest = 2 ** math.floor(math.log2(n_head))
    slopes = power_of_2(closest)
    if closest < n_head:
        slopes += power_of_2(2 * closest)[0::2][: n_head - closest]
    return torch.tensor(slopes)


class ALiBiAttention(VanillaAttention):
    """Causal softmax attention with per-head linear distance biases."""

    def __init__(self, *args: Any, query_block: int = 256, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.query_block = checked_query_block(query_block)
        self.register_buffer("slopes", alibi_slopes(self.n_head), persistent=False)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None) -> Tensor:
        if q.dtype not in (torch.float32, torch.float64) or type(self).score_bias is not (
            ALiBiAttention.score_bias
        ):
            return super().attend(q, k, v, g)
        pos = torch.arange(q.size(2), device=q.device, dtype=q.dtype)
        c = -self.slopes.to(q.dtype)[:, None, None] * pos[:, None]  # (H, T, 1): c_t = -m_h t
        return difference_bias_attention(q, k, v, c[None], self.query_block, self.dropout_p)

    def score_bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        distance = (q_pos[:, None] - k_pos[None, :]).float()  # (Tq, Tk)
        bias = -self.slopes[:, None, None] * distance  # (H, Tq, Tk)
        return bias.masked_fill(distance < 0, -math.inf)
