"""Gated DeltaProduct (Siems et al. 2025, "DeltaProduct: Improving State-Tracking in Linear RNNs
via Householder Products"), causal: n_h gated delta-rule steps per token.

    S_{t,0} = α_t S_{t-1}
    S_{t,j} = (I - β_{t,j} k_{t,j} k_{t,j}^T) S_{t,j-1} + β_{t,j} k_{t,j} v_{t,j}^T   (j = 1 .. n_h)
    S_t = S_{t,n_h},   o_t = S_t^T q_t

Each token projects n_h keys, values and write strengths β_{t,j} = σ(x_t W_β,j), and one
query and one decay α_t (Gated DeltaNet's, once per token); with unit keys, the state's
transition is α_t times a product of n_h generalised Householder matrices I - β k k^T instead
of Gated DeltaNet's one (n_h = 1), which lets a token rotate or reflect the state rather than
overwrite one direction (with `allow_neg_eigval`, β in (0, 2) and reflections: the state
tracking the paper studies). q and k are SiLU'd and L2-normalised as Gated DeltaNet's here.

Computed as the gated delta rule (delta_rule.py) over the n_h T sub-steps of the sequence in
order (t, j): the decay on each token's first sub-step, the query on its last one, and the
output read there; chunked for training (queries and outputs only at the last sub-steps:
`query_stride` = n_h), recurrent for decoding (a zero query on the other sub-steps). A token's
sub-steps see only it and the past: causal as the delta rule is. The k and v heads hold the
n_h sub-steps: `split_heads` gives q (B, H, T, D), k and v (B, n_h H_kv, T, D) (sub-step j's
heads at j H_kv ..), `core_inputs` the sub-steps in order, (B, H, n_h T, D).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attn_lightning.attention.delta_rule import (
    DeltaRuleAttention,
    DeltaRuleState,
    chunked_delta_rule,
    delta_rule_matrix,
    recurrent_delta_rule,
)
from attn_lightning.attention.short_conv import ShortConvCache, ShortConvolution
from attn_lightning.errors import ConfigError


class GatedDeltaProduct(DeltaRuleAttention):
    """n_h delta-rule steps per token, each with its own key, value and β, and one decay."""

    def __init__(
        self,
        *args: Any,
        num_householder: int = 2,
        a_init_range: Sequence[float] = (1.0, 16.0),
        dt_init_range: Sequence[float] = (0.001, 0.1),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        n_h = num_householder
        if isinstance(n_h, bool) or not isinstance(n_h, int) or n_h < 1:
            raise ConfigError(f"attention.num_householder={n_h!r} must be an integer >= 1")
        self.num_householder = n_h
        H, D, C = self.n_head, self.head_dim, self.n_embd
        # q and n_h keys and values per k/v head: the base's projection, n_h times the k and v
        channels = (H + 2 * n_h * self.n_kv_head) * D
        self.qkv = nn.Linear(C, channels, bias=self.qkv.bias is not None)
        self.qkv_conv = ShortConvolution(channels, self.short_conv) if self.short_conv else None
        self.gate_proj = nn.Linear(C, (n_h + 1) * H, bias=False)  # [W_β,1 .. W_β,n_h | W_a]
        self.A_log = nn.Parameter(torch.empty(H).uniform_(*a_init_range).log())  # (H,)
        log_dt = torch.empty(H).uniform_(math.log(dt_init_range[0]), math.log(dt_init_range[1]))
        dt = log_dt.exp()  # log-uniform time steps; dt_bias = softplus^{-1}(dt)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # (H,)

    def gates(self, x: Tensor) -> Tensor:
        """(B, T, C) -> [β_1 .. β_n_h, log α] (B, H, T, n_h + 1)."""
        B, T, _ = x.shape
        gates = self.gate_proj(x).view(B, T, self.num_householder + 1, self.n_head)
        beta, a = gates[:, :, :-1], gates[:, :, -1]  # (B, T, n_h, H), (B, T, H)
        log_alpha = -self.A_log.exp() * F.softplus(a + self.dt_bias)  # (B, T, H), <= 0
        g = torch.cat((self.write_strength(beta), log_alpha[:, :, None]), dim=2)
        return g.permute(0, 3, 1, 2)

    def core_inputs(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q (B, H, T, D), k, v (B, n_h H_kv, T, D) -> RoPE on q and k (each sub-step at its
        token's position), then q and the sub-steps' k and v (B, H, n_h T, D)."""
        q, k = self._apply_rope(q, k)
        return q, self._substeps(k), self._substeps(v)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None) -> Tensor:
        beta, log_alpha = self._substep_gates(g, k)
        n_h = self.num_householder
        features = self.unit_features
        return chunked_delta_rule(
            q, k, v, beta, log_alpha, self.chunk_size, features=features, query_stride=n_h
        )

    def substep_matrix(self, q: Tensor, k: Tensor, g: Tensor | None = None) -> Tensor:
        """(B, H, T, n_h T): what each token's output takes of each sub-step's value."""
        beta, log_alpha = self._substep_gates(g, k)
        q_sub = self._on_last_substep(self.features(q))
        matrix = delta_rule_matrix(q_sub, self.features(k), beta, log_alpha)
        return matrix[:, :, self.num_householder - 1 :: self.num_householder]

    def attention_matrix(self, q: Tensor, k: Tensor, g: Tensor | None = None) -> Tensor:
        """(B, H, T, T): `substep_matrix` summed over each token's sub-steps (the weight of
        token j's values on output i; `forward` applies the sub-step matrix itself)."""
        rows = self.substep_matrix(q, k, g)
        return rows.unflatten(-1, (-1, self.num_householder)).sum(-1)

    def forward(
        self, x: Tensor, return_attn: bool = False, cache: Any = None
    ) -> tuple[Tensor, Tensor | None]:
        """The base's, except that with `return_attn` the output is the (T, n_h T) sub-step
        matrix applied to the sub-steps' values, and the weights shown are its sums per token
        (`attention_matrix`)."""
        if not return_attn or cache is not None:
            return super().forward(x, return_attn, cache)
        B, T, C = x.shape
        if self.block_size < T:
            raise ValueError(f"positions up to {T} exceed block_size {self.block_size}")
        g = self.gates(x)
        q, k, v = self.core_inputs(*self.split_heads(x))
        rows = self.substep_matrix(q, k, g)  # (B, H, T, n_h T)
        y = (rows @ v).transpose(1, 2).reshape(B, T, C)
        att = rows.unflatten(-1, (-1, self.num_householder)).sum(-1)
        return self.resid_dropout(self._project(y, x)), att

    def decode(
        self, q: Tensor, k: Tensor, v: Tensor, cache: DeltaRuleState, g: Tensor | None = None
    ) -> Tensor:
        T, length, n_h = q.size(2), cache.length, self.num_householder
        k, v = self.features(self._substeps(k)), self._substeps(v)
        beta, log_alpha = self._substep_gates(g, k)
        q = self.features(q)
        if T == 1:
            out = recurrent_delta_rule(self._on_last_substep(q), k, v, beta, log_alpha, cache)
            out = out[:, :, n_h - 1 :: n_h]
        else:
            out = chunked_delta_rule(
                q, k, v, beta, log_alpha, self.chunk_size, cache, query_stride=n_h
            )
        cache.length = length + T  # tokens, not sub-steps
        return out

    def _split_qkv(
        self, qkv: Tensor, conv_cache: ShortConvCache | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The base's split with n_h k and v heads per k/v head: q (B, H, T, D), k and v
        (B, n_h H_kv, T, D)."""
        return super()._split_qkv(qkv, conv_cache, self.num_householder * self.n_kv_head)

    def _substeps(self, x: Tensor) -> Tensor:
        """k or v (B, n_h H_kv, T, D) -> (B, H, n_h T, D): heads repeated to H, the sub-steps
        in order (t, j)."""
        B, _, T, D = x.shape
        x = x.view(B, self.num_householder, self.n_kv_head, T, D)
        groups = self.n_head // self.n_kv_head
        x = x if groups == 1 else x.repeat_interleave(groups, dim=2)
        return x.permute(0, 2, 3, 1, 4).reshape(B, self.n_head, T * self.num_householder, D)

    def _on_last_substep(self, q: Tensor) -> Tensor:
        """q (B, H, T, D) -> (B, H, n_h T, D): each token's query on its last sub-step."""
        B, H, T, D = q.shape
        n_h = self.num_householder
        return torch.cat((q.new_zeros(B, H, T, n_h - 1, D), q[:, :, :, None]), 3).view(
            B, H, n_h * T, D
        )

    def _substep_gates(self, g: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor | None]:
        """Gates (B, H, T, n_h + 1) -> β (B, H, n_h T) of the sub-steps, and log α on each
        token's first sub-step (0 on the others); without gates β = 1 and no decay."""
        if g is None:
            return like.new_ones(like.shape[:3]), None
        B, H = g.shape[:2]
        beta = g[..., :-1].reshape(B, H, -1)
        log_alpha = F.pad(g[..., -1:], (0, self.num_householder - 1)).reshape(B, H, -1)
        return beta, log_alpha
