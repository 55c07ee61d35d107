"""Causal kernelised attention: the base of linear attention and the Performer.

With non-negative feature maps φ(q_i), φ(k_j) (M features) the causal output is

    y_i = φ(q_i)^T S_i / (φ(q_i)^T z_i + eps),   S_i = Σ_{j<=i} φ(k_j) v_j^T,  z_i = Σ_{j<=i} φ(k_j)

computed three ways that agree:
- chunked (training, prefill): inside a chunk of C positions a small masked C x C product,
  across chunks a running (M x D) state; never a (T, M, D) tensor of prefix sums;
- recurrent (decoding): one (S, z) update per token, O(1) in the sequence length;
- materialised: the (T, T) matrix A_ij = φ(q_i)·φ(k_j) / (Σ_{j'<=i} φ(q_i)·φ(k_j') + eps).

Why chunked: the cumulative-sum form keeps S_i for every position, a (T, M, D) tensor T times
the state, written and read once per position and far out of cache; the chunked form does the
same sums as matmuls (C x C within a chunk, M x D across) and needs memory linear in T
(chunked_linear.py: one autograd Function whose backward recomputes the chunk products).

`KernelAttention` runs them as an attention core; a variant gives only its feature map φ
(`features`) and its `eps`. There is no attention dropout (the matrix is never formed on the
fast path).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from attn_lightning.attention.base import CausalSelfAttention
from attn_lightning.attention.chunked_linear import chunked_linear_attention
from attn_lightning.attention.kv_cache import TensorLength
from attn_lightning.errors import ConfigError


class LinearAttentionState:
    """The recurrent state of one layer: S (B, H, M, D) and z (B, H, M); `length` tokens seen."""

    def __init__(self) -> None:
        self.length = 0
        self.S: Tensor | None = None
        self.z: Tensor | None = None

    def advance(self, num_tokens: int, device: torch.device) -> None:
        self.length += num_tokens


class StaticLinearAttentionState(TensorLength, LinearAttentionState):
    """The state of compiled decoding: S and z have fixed shapes already; only the count moves
    into a tensor (kv_cache.TensorLength)."""

    def __init__(self) -> None:
        self.S: Tensor | None = None
        self.z: Tensor | None = None


def chunked_causal_linear_attention(
    q: Tensor, k: Tensor, v: Tensor, chunk_size: int, eps: float, state: LinearAttentionState | None
) -> Tensor:
    """q, k: (B, H, T, M) non-negative features; v: (B, H, T, D) -> (B, H, T, D).

    Continues from `state` and advances it when one is given (chunked_linear.py: the
    numerator, normaliser and division in one autograd Function that recomputes its chunk
    products in the backward)."""
    carried = state is not None and state.S is not None
    y, S, z = chunked_linear_attention(
        q, k, v, chunk_size, eps, state.S if carried else None, state.z if carried else None
    )
    if state is not None:
        state.S, state.z = S, z
        state.advance(q.size(2), q.device)
    return y


def recurrent_linear_attention(
    q: Tensor, k: Tensor, v: Tensor, eps: float, state: LinearAttentionState
) -> Tensor:
    """The RNN form, one token at a time: q, k (B, H, T, M), v (B, H, T, D). Each token
    updates the state in place (S += φ(k_t) v_t^T, z += φ(k_t)) and reads it with two batched
    products: a handful of ops per token (decoding is op-bound), no new state tensors, no
    per-token stack."""
    if state.S is None:
        B, H, _, M = q.shape
        state.S = q.new_zeros(B, H, M, v.size(-1))
        state.z = q.new_zeros(B, H, M)
    S, z = state.S, state.z.unsqueeze(-1)  # z as a column (B, H, M, 1), a view of state.z
    tiny = torch.finfo(q.dtype).tiny
    T = q.size(2)
    outputs = []
    for t in range(T):
        q_t, k_t, v_t = (q, k, v) if T == 1 else (x[:, :, t : t + 1] for x in (q, k, v))
        k_col = k_t.transpose(-2, -1)  # (B, H, M, 1)
        S.addcmul_(k_col, v_t)  # + φ(k_t) v_t^T
        z.add_(k_col)
        den = (q_t @ z).add_(eps).clamp_min_(tiny)  # (B, H, 1, 1)
        outputs.append((q_t @ S).div_(den))  # (B, H, 1, D)
    state.advance(T, q.device)
    return outputs[0] if T == 1 else torch.cat(outputs, dim=2)


def linear_attention_matrix(q: Tensor, k: Tensor, eps: float) -> Tensor:
    """The equivalent (B, H, T, T) matrix of features q, k (B, H, T, M)."""
    scores = (q @ k.transpose(-2, -1)).tril()  # (B, H, T, T)
    return scores / (scores.sum(-1, keepdim=True) + eps).clamp_min(torch.finfo(q.dtype).tiny)


class KernelAttention(CausalSelfAttention):
    """Causal attention with a non-negative feature map, in its chunked, recurrent and
    materialised forms; a subclass defines `features(x, is_query)` and `eps`."""

    eps: float = 0.0  # added to the normaliser

    def __init__(self, *args: Any, chunk_size: int = 64, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if chunk_size < 1:
            raise ConfigError(f"attention.chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        self.attn_dropout = nn.Identity()  # no dropout on an implicit matrix

    @abstractmethod
    def features(self, x: Tensor, is_query: bool) -> Tensor:
        """φ(x): (B, H, T, D) queries or keys -> (B, H, T, M) non-negative features."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None) -> Tensor:
        q, k = self.features(q, True), self.features(k, False)
        return chunked_causal_linear_attention(q, k, v, self.chunk_size, self.eps, state=None)

    def attention_matrix(self, q: Tensor, k: Tensor, g: Tensor | None = None) -> Tensor:
        return linear_attention_matrix(self.features(q, True), self.features(k, False), self.eps)

    def _new_core_cache(self) -> LinearAttentionState:
        return LinearAttentionState()

    def _new_static_core_cache(self) -> StaticLinearAttentionState | None:
        """The recurrent state is fixed-size: compiled decoding only counts in a tensor. None
        for a subclass with its own cache or decode."""
        return StaticLinearAttentionState() if self._decodes_as(KernelAttention) else None

    def decode(
        self, q: Tensor, k: Tensor, v: Tensor, cache: LinearAttentionState, g: Tensor | None = None
    ) -> Tensor:
        q, k = self.features(q, True), self.features(self._repeat_kv(k), False)
        v = self._repeat_kv(v)
        if q.size(2) == 1:
            return recurrent_linear_attention(q, k, v, self.eps, cache)
        return chunked_causal_linear_attention(q, k, v, self.chunk_size, self.eps, cache)
