"""Kimi Delta Attention (KDA; Kimi Team 2025, "Kimi Linear: An Expressive, Efficient Attention
Architecture"), causal: the gated delta rule with a decay per key channel.

    S_t = (I - β_t k_t k_t^T) diag(α_t) S_{t-1} + β_t k_t v_t^T,   o_t = S_t^T q_t
    β_t = σ(x_t W_β),   log α_t = -exp(A_log) softplus(x_t W_α↓ W_α↑ + dt_bias)   (per channel)

with q, k = SiLU(.) then L2-normalised per head (S: D_k x D_v, as delta_rule.py keeps it).
Gated DeltaNet's scalar decay α_t becomes a vector: each key channel of the state forgets at
its own, data-dependent rate (GLA's fine-grained gate), and the delta step then corrects the
decayed state's answer to k_t. The decay comes from a rank-r projection of x (r = the head dim
by default, as in Kimi Linear) with Mamba2's parametrisation, as fla's `KimiDeltaAttention`:
a rate exp(A_log) per head times a softplus time step per channel. As for DeltaNet here, q is
not scaled and the output is not normalised nor gated (the base's `output_gate` adds the gate;
delta_rule.py says why). Training uses the chunked form (chunked_channel_delta_rule.py),
decoding the O(1)-per-token recurrent form, `allow_neg_eigval` gives β in (0, 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attn_lightning.attention.delta_rule import DeltaRuleAttention
from attn_lightning.errors import ConfigError


def _check_range(key: str, bounds: Sequence[float]) -> None:
    if len(bounds) != 2 or not 0 < bounds[0] <= bounds[1]:
        raise ConfigError(f"attention.{key}={list(bounds)} must be [low, high], 0 < low <= high")


class KimiDeltaAttention(DeltaRuleAttention):
    """The delta rule with a write strength β_t per head and a decay α_t per key channel."""

    def __init__(
        self,
        *args: Any,
        gate_rank: int | None = None,
        a_init_range: Sequence[float] = (1.0, 16.0),
        dt_init_range: Sequence[float] = (0.001, 0.1),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        H, D = self.n_head, self.head_dim
        rank = D if gate_rank is None else gate_rank
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ConfigError(f"attention.gate_rank={gate_rank!r} must be >= 1, or null (head dim)")
        _check_range("a_init_range", a_init_range)
        _check_range("dt_init_range", dt_init_range)
        self.beta_proj = nn.Linear(self.n_embd, H, bias=False)  # W_β: C x H
        self.gate_down = nn.Linear(self.n_embd, rank, bias=False)  # W_α↓: C x r
        self.gate_up = nn.Linear(rank, H * D, bias=False)  # W_α↑: r x H D
        self.A_log = nn.Parameter(torch.empty(H).uniform_(*a_init_range).log())  # (H,)
        low, high = math.log(dt_init_range[0]), math.log(dt_init_range[1])
        dt = torch.empty(H * D).uniform_(low, high).exp()  # log-uniform time steps
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^{-1}(dt)

    def gates(self, x: Tensor) -> Tensor:
        """(B, T, C) -> [β, log α_1 .. log α_D] (B, H, T, 1 + D)."""
        B, T, _ = x.shape
        H, D = self.n_head, self.head_dim
        a = self.gate_up(self.gate_down(x)).view(B, T, H, D)
        log_alpha = -self.A_log.exp()[:, None] * F.softplus(a + self.dt_bias.view(H, D))
        beta = self.write_strength(self.beta_proj(x))  # (B, T, H)
        return torch.cat((beta[..., None], log_alpha), dim=-1).transpose(1, 2)

    def write_and_decay(self, g: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor | None]:
        """Gates (B, H, T, 1 + D) -> β (B, H, T) and log α (B, H, T, D) per key channel."""
        if g is None:
            return super().write_and_decay(g, like)
        beta, log_alpha = g.split((1, g.size(-1) - 1), dim=-1)  # one gradient copy, not two
        return beta.squeeze(-1), log_alpha
