"""Softmax attention (Vaswani et al. 2017), causal.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + M) V,   M_ij = -inf for j > i

The fast path is `F.scaled_dot_product_attention(is_causal=True)` (flash / memory-efficient
kernels where available); the explicit masked softmax runs only when weights are requested.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from attn_lightning.attention.base import CausalSelfAttention, causal_mask, masked_softmax


class VanillaAttention(CausalSelfAttention):
    """Exact causal softmax attention."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout_p, is_causal=True)

    def attention_matrix(self, q: Tensor, k: Tensor) -> Tensor:
        T = q.size(-2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, T, T)
        return masked_softmax(scores, causal_mask(T, q.device))
