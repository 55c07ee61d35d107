"""Based's linear attention (Arora et al. 2024, "Simple linear attention language models balance
the recall-throughput tradeoff"): causal linear attention whose kernel is the 2nd-order Taylor
expansion of softmax's exp, on a small projected feature dimension F.

    q̃ = q P_q,  k̃ = k P_k   (head_dim -> F, learned),   s = q̃·k̃ / √F
    φ(q̃)·φ(k̃) = 1 + s + s²/2 ≈ exp(s),   φ(x) = [1, x / F^¼, vec(x ⊗ x) / (√2 √F)]

1 + s + s²/2 > 0 for every s (its minimum is 1/2), so the normaliser of the kernel family
(linear_kernel.py: chunked for training, recurrent for decoding) stays positive although φ has
negative entries. (x·y)² = Σ_i x_i² y_i² + 2 Σ_{i<j} x_i x_j y_i y_j, so φ keeps each unordered
pair once, with the diagonal divided by √2: 1 + F + F(F+1)/2 features (153 for F = 16) instead
of the 1 + F + F² of the plain outer product, the same inner product and a state of
(M = 153) x head_dim per head. The paper's full Based layer also mixes in sliding-window
attention and short convolutions; here that is `sliding_window` in a hybrid stack and the
`short_conv` option every variant has.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from attn_lightning.attention.linear_kernel import KernelAttention
from attn_lightning.errors import ConfigError


class BasedAttention(KernelAttention):
    """Causal linear attention with the 2nd-order Taylor feature map on F projected dims."""

    def __init__(self, *args: Any, feature_dim: int = 16, eps: float = 1e-12, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if feature_dim < 1:
            raise ConfigError(f"attention.feature_dim must be >= 1, got {feature_dim}")
        self.eps = eps
        self.feature_dim = feature_dim
        # one projection for all heads (each head's own q/k projection already precedes it)
        self.q_feature = nn.Linear(self.head_dim, feature_dim, bias=False)
        self.k_feature = nn.Linear(self.head_dim, feature_dim, bias=False)
        rows, cols = torch.triu_indices(feature_dim, feature_dim, offset=1)  # pairs i < j
        self.register_buffer("pair_rows", rows, persistent=False)
        self.register_buffer("pair_cols", cols, persistent=False)

    def features(self, x: Tensor, is_query: bool) -> Tensor:
        """(B, H, T, D) -> (B, H, T, 1 + F + F(F+1)/2), with φ(q)·φ(k) = 1 + s + s²/2."""
        x = (self.q_feature if is_query else self.k_feature)(x)  # (B, H, T, F)
        x = x / self.feature_dim**0.25  # now x·y = s (the 1/√F of softmax's q·k/√d)
        square = x * x / math.sqrt(2)  # (B, H, T, F): the diagonal i = j
        cross = x[..., self.pair_rows] * x[..., self.pair_cols]  # (B, H, T, F(F-1)/2): i < j
        ones = x.new_ones(*x.shape[:-1], 1)
        return torch.cat((ones, x, square, cross), dim=-1)
