"""Retention (Sun et al. 2023, "Retentive Network"), causal, one fixed decay per head.

    S_t = γ_h S_{t-1} + k_t^T v_t,   o_t = q_t S_t,   γ_h = 1 - 2^(-5-h),  h = 0..H-1

equivalently the parallel form o = (Q K^T ⊙ D) V with D_nm = γ^(n-m) for n >= m, else 0.
Head h remembers about 1 / (1 - γ_h) = 2^(5+h) tokens: the heads span short to long memories.
As in fla (`naive_retention`), q is scaled by D^-1/2; each head's output is RMS-normalised
before the output projection (decay_kernel.py; RetNet normalises heads with GroupNorm). The
paper's rotation e^{inθ} of q and k (xPos) is the base's `rope` option; its output gate
swish(X W_G) is left out (it would add C^2 parameters per layer).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attn_lightning.attention.decay_kernel import DecayAttention


class Retention(DecayAttention):
    """Multi-scale retention: linear attention whose state decays by γ_h per token."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        heads = torch.arange(self.n_head, dtype=torch.float64)
        log_gamma = torch.log1p(-(2.0 ** (-5.0 - heads)))  # (H,) log γ_h, exact near γ = 1
        self.register_buffer("log_gamma", log_gamma.float(), persistent=False)

    def log_decay(self, x: Tensor) -> Tensor:
        """log γ_h (B, H, T, 1) for every token of x (B, T, C)."""
        B, T, _ = x.shape
        return self.log_gamma.view(1, self.n_head, 1, 1).expand(B, self.n_head, T, 1)
