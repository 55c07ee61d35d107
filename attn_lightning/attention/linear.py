"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"), causal.

    y_i = φ(q_i)^T Σ_{j<=i} φ(k_j) v_j^T / (φ(q_i)^T Σ_{j<=i} φ(k_j) + eps),   φ(x) = elu(x) + 1

Softmax's exp(q·k) is replaced by the kernel φ(q)·φ(k), so the causal sums become running
states: training uses the chunked form, decoding the O(1)-per-token recurrent form
(linear_kernel.py).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from attn_lightning.attention.linear_kernel import KernelAttention


class LinearAttention(KernelAttention):
    """Causal linear attention with the elu(x) + 1 feature map."""

    def __init__(self, *args: Any, eps: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps

    def features(self, x: Tensor, is_query: bool) -> Tensor:
        return F.elu(x).add_(1)  # (B, H, T, D), positive; the same map for queries and keys
