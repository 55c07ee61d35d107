"""Gated DeltaNet (Yang, Kautz & Hatamizadeh, ICLR 2025, "Gated Delta Networks: Improving
Mamba2 with Delta Rule"), causal.

    S_t = α_t S_{t-1} (I - β_t k_t k_t^T) + β_t v_t k_t^T,   o_t = S_t q_t
    β_t = σ(x_t W_β),   α_t = exp(-exp(A_log) softplus(x_t W_a + dt_bias))

with q, k = SiLU(.) then L2-normalised per head. The delta rule's targeted overwrite plus
Mamba2's scalar decay per head and token (α_t -> 0 wipes the state, α_t = 1 is DeltaNet);
β_t = 2 σ(x_t W_β) in (0, 2) with `allow_neg_eigval` (Grazzi et al. 2025).
The decay is parametrised as in Mamba2 and fla's layer: a rate exp(A_log) per head times a
softplus time step. Training uses the chunked form, decoding the O(1)-per-token recurrent form
(delta_rule.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attn_lightning.attention.delta_rule import DeltaRuleAttention


class GatedDeltaNet(DeltaRuleAttention):
    """The delta rule with a write strength β_t and a decay α_t per head and token."""

    def __init__(
        self,
        *args: Any,
        a_init_range: Sequence[float] = (1.0, 16.0),
        dt_init_range: Sequence[float] = (0.001, 0.1),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        H = self.n_head
        self.gate_proj = nn.Linear(self.n_embd, 2 * H, bias=False)  # [W_β | W_a]: C x 2H
        self.A_log = nn.Parameter(torch.empty(H).uniform_(*a_init_range).log())  # (H,)
        log_dt = torch.empty(H).uniform_(math.log(dt_init_range[0]), math.log(dt_init_range[1]))
        dt = log_dt.exp()  # log-uniform time steps; dt_bias = softplus^{-1}(dt)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # (H,)

    def gates(self, x: Tensor) -> Tensor:
        """(B, T, C) -> [β, log α] (B, H, T, 2)."""
        beta, a = self.gate_proj(x).chunk(2, dim=-1)  # (B, T, H) each
        log_alpha = -self.A_log.exp() * F.softplus(a + self.dt_bias)  # (B, T, H), <= 0
        return torch.stack((self.write_strength(beta), log_alpha), dim=-1).transpose(1, 2)
