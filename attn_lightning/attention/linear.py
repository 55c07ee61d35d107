"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"), causal.

    y_i = φ(q_i)^T Σ_{j<=i} φ(k_j) v_j^T / (φ(q_i)^T Σ_{j<=i} φ(k_j) + eps),   φ(x) = elu(x) + 1

Softmax's exp(q·k) is replaced by the kernel φ(q)·φ(k), so the causal sums become running
states: training uses the chunked form, decoding the O(1)-per-token recurrent form
(linear_kernel.py). There is no attention dropout (the matrix is never formed on the fast path).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from attn_lightning.attention.base import CausalSelfAttention
from attn_lightning.attention.linear_kernel import (
    LinearAttentionState,
    chunked_causal_linear_attention,
    linear_attention_matrix,
    recurrent_linear_attention,
)


class LinearAttention(CausalSelfAttention):
    """Causal linear attention with the elu(x) + 1 feature map."""

    def __init__(self, *args: Any, eps: float = 1e-6, chunk_size: int = 64, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.eps = eps
        self.chunk_size = chunk_size
        self.attn_dropout = nn.Identity()  # no dropout on an implicit matrix

    def features(self, x: Tensor) -> Tensor:
        return F.elu(x) + 1  # (B, H, T, D), positive

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k = self.features(q), self.features(k)
        return chunked_causal_linear_attention(q, k, v, self.chunk_size, self.eps, state=None)

    def attention_matrix(self, q: Tensor, k: Tensor) -> Tensor:
        return linear_attention_matrix(self.features(q), self.features(k), self.eps)

    def new_cache(self) -> LinearAttentionState:
        return LinearAttentionState()

    def decode(self, q: Tensor, k: Tensor, v: Tensor, cache: LinearAttentionState) -> Tensor:
        q, k = self.features(q), self.features(self.repeat_kv(k))
        v = self.repeat_kv(v)
        if q.size(2) == 1:
            return recurrent_linear_attention(q, k, v, self.eps, cache)
        return chunked_causal_linear_attention(q, k, v, self.chunk_size, self.eps, cache)
