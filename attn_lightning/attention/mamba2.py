"""Mamba-2's SSD layer (Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient
Algorithms Through Structured State Space Duality"), causal, as a sequence mixer on our base.

    S_t = α_t S_{t-1} + dt_t B_t^T x_t,   y_t = C_t S_t + D_h x_t
    dt_t = softplus(x_t W_dt + dt_bias),   log α_t = A_h dt_t,   A_h = -exp(A_log_h)

per head h: a scalar decay per head and token (SSD's A_t = α_t I), B_t and C_t (1 x N) the
input and output maps of the state S (N x P), x_t (1 x P) the head's input. As Mamba2 inits
them: A_h = -U[1, 16], dt_bias = softplus^{-1}(dt) with dt log-uniform in [1e-3, 1e-1], D = 1.

How it sits on the base (q, k, v projected from the layer input, (B, H, T, D) per head):
- C -> queries, B -> keys, x -> values, so N = P = the head dim and Mamba2's inner width is
  n_embd (no expansion x2): parameters stay near the other variants'. No D^-1/2 scale of q
  (Mamba2 has none).
- dt scales the input through the keys, k_t = dt_t B_t (Mamba2's reference scales x; the
  product dt B^T x is the same), so the core is decay attention on (C, dt B, x) with
  log α = A dt (decay_kernel.py's kernels: chunked for training, memory linear in T, the
  recurrent state for decoding, O(1) per token), and the matrix it applies to x is SSD's
  M_ij = C_i · B_j dt_j Π_{j<s<=i} α_s, plus D_h on the diagonal: `return_attn` shows the
  whole mixer, skip included. The gates g are [log α, dt] (B, H, T, 2), from the layer input
  (dt is not convolved, as in Mamba2).
- groups: with `n_kv_head` = G < H, B (keys) and x (values) are shared by the H/G heads of a
  group and C is per head, as the base shares k/v for grouped-query attention; Mamba2's
  n_groups shares B and C and keeps x per head. The default, G = H (every head its own B, C
  and x: Mamba2 with n_groups = n_heads), is the same function in both.
- Mamba2 convolves x, B and C (kernel 4, SiLU) before the SSM: the base's `short_conv` on the
  projected q, k, v (its convolution has no bias; Mamba2's has one).
- the output: y (skip included) RMS-normalised per head before the output projection
  (decay_kernel.py's `HeadNormProjection`, the gain shared by the heads): Mamba2 normalises
  groups of d_inner / n_groups channels, one head here as with n_groups = n_heads. It gates
  y by silu(z), z = x W_z, before that norm: the base's `output_gate` (W_g = W_z), which this
  projection takes in Mamba2's order, RMSNorm(y ⊙ silu(x W_g)) W_o (GLA and retention gate
  after the norm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attn_lightning.attention.base import CausalSelfAttention
from attn_lightning.attention.decay_kernel import (
    DecayState,
    HeadNormProjection,
    chunked_decay_attention,
    decay_attention_matrix,
    recurrent_decay_attention,
)
from attn_lightning.errors import ConfigError


def _check_range(name: str, bounds: Sequence[float]) -> tuple[float, float]:
    """`attention.<name>` as (low, high) with 0 < low <= high."""
    if len(bounds) != 2 or not 0 < bounds[0] <= bounds[1]:
        raise ConfigError(
            f"attention.{name}={list(bounds)} must be [low, high] with 0 < low <= high"
        )
    return float(bounds[0]), float(bounds[1])


class GateThenNormProjection(HeadNormProjection):
    """The per-head RMSNorm and W_o, the base's output gate multiplied before the norm:
    RMSNorm(y ⊙ gate) W_o, Mamba2's gated norm (`norm_before_gate=False`)."""

    gate_after_norm = False  # the base multiplies y by the gate, then calls the projection


class Mamba2(CausalSelfAttention):
    """The SSD recurrence: a state decayed by α_t per head and token, written dt_t B_t^T x_t,
    read by C_t, plus a skip D_h x_t."""

    def __init__(
        self,
        *args: Any,
        chunk_size: int = 32,
        a_init_range: Sequence[float] = (1.0, 16.0),
        dt_init_range: Sequence[float] = (0.001, 0.1),
        norm_eps: float = 1e-5,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if chunk_size < 1:
            raise ConfigError(f"attention.chunk_size must be >= 1, got {chunk_size}")
        a_low, a_high = _check_range("a_init_range", a_init_range)
        dt_low, dt_high = _check_range("dt_init_range", dt_init_range)
        H = self.n_head
        self.chunk_size = chunk_size
        self.attn_dropout = nn.Identity()  # no dropout on an implicit matrix
        self.proj = GateThenNormProjection(H, self.head_dim, self.proj.bias is not None, norm_eps)
        self.dt_proj = nn.Linear(self.n_embd, H, bias=False)  # W_dt: C x H
        self.A_log = nn.Parameter(torch.empty(H).uniform_(a_low, a_high).log())  # (H,)
        dt = torch.empty(H).uniform_(math.log(dt_low), math.log(dt_high)).exp()  # log-uniform
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^{-1}(dt), (H,)
        self.D = nn.Parameter(torch.ones(H))  # the skip, per head

    def gates(self, x: Tensor) -> Tensor:
        """[log α, dt] (B, H, T, 2) from x (B, T, C)."""
        dt = F.softplus(self.dt_proj(x) + self.dt_bias)  # (B, T, H)
        log_alpha = -self.A_log.exp() * dt  # (B, T, H), <= 0
        return torch.stack((log_alpha, dt), dim=-1).transpose(1, 2)

    def ssd_keys(self, k: Tensor, g: Tensor | None) -> tuple[Tensor, Tensor]:
        """Keys B (B, H, T, D) and gates -> the core's keys dt B and log α (B, H, T, 1), in
        k's dtype (the one the kernels compute in)."""
        if g is None:
            raise ValueError("Mamba2 needs its gates [log α, dt]: pass g = module.gates(x)")
        g = g.to(k.dtype)
        return k * g[..., 1:], g[..., :1]

    def skip(self, v: Tensor) -> Tensor:
        """D_h x_t (B, H, T, D)."""
        return self.D.to(v.dtype)[:, None, None] * v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None) -> Tensor:
        keys, log_alpha = self.ssd_keys(k, g)
        return chunked_decay_attention(q, keys, v, log_alpha, self.chunk_size, None) + self.skip(v)

    def attention_matrix(self, q: Tensor, k: Tensor, g: Tensor | None = None) -> Tensor:
        keys, log_alpha = self.ssd_keys(k, g)
        matrix = decay_attention_matrix(q, keys, log_alpha, self.chunk_size)  # (B, H, T, T)
        eye = torch.eye(q.size(2), dtype=q.dtype, device=q.device)
        return matrix + self.D.to(q.dtype)[:, None, None] * eye

    def _new_core_cache(self) -> DecayState:
        return DecayState()

    def decode(
        self, q: Tensor, k: Tensor, v: Tensor, cache: DecayState, g: Tensor | None = None
    ) -> Tensor:
        v = self._repeat_kv(v)
        keys, log_alpha = self.ssd_keys(self._repeat_kv(k), g)
        if q.size(2) == 1:
            y = recurrent_decay_attention(q, keys, v, log_alpha, cache)
        else:
            y = chunked_decay_attention(q, keys, v, log_alpha, self.chunk_size, cache)
        return y + self.skip(v)
