"""Gated linear attention (Yang et al. 2023, "Gated Linear Attention Transformers with
Hardware-Efficient Training"), causal, a data-dependent decay per key channel.

    S_t = diag(α_t) S_{t-1} + k_t^T v_t,   o_t = q_t S_t,   α_t = sigmoid(x_t W_1 W_2 + b)^(1/τ)

W_1 (C x r) W_2 (r x D per k/v head) is a rank-r projection of the layer input (r = 16),
τ = 16 pulls α towards 1 (long memories); log α_t = logsigmoid(·) / τ is computed directly,
so α near 0 is a finite negative number rather than a log of zero. With grouped-query heads each
k/v head's decay serves its query heads (as in fla's layer). As in fla (`naive_recurrent_gla`),
q is scaled by D^-1/2; each head's output is RMS-normalised before the output projection
(decay_kernel.py), as the paper's layer does; its output gate swish(x W_r) is left out (it
would add C^2 parameters per layer).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from attn_lightning.attention.decay_kernel import DecayAttention


class GatedLinearAttention(DecayAttention):
    """Linear attention whose state decays per key channel by a gate computed from x."""

    def __init__(
        self,
        *args: Any,
        chunk_size: int = 32,
        gate_rank: int = 16,
        gate_temperature: float = 16.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, chunk_size=chunk_size, **kwargs)
        self.gate_temperature = gate_temperature
        self.gate_down = nn.Linear(self.n_embd, gate_rank, bias=False)  # W_1
        self.gate_up = nn.Linear(gate_rank, self.n_kv_head * self.head_dim)  # W_2, b

    def log_decay(self, x: Tensor) -> Tensor:
        """log α (B, H, T, D) from x (B, T, C)."""
        B, T, _ = x.shape
        logits = self.gate_up(self.gate_down(x)).view(B, T, self.n_kv_head, self.head_dim)
        log_alpha = F.logsigmoid(logits.transpose(1, 2)) / self.gate_temperature  # (B, H_kv, T, D)
        return self._repeat_kv(log_alpha)
