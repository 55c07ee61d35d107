"""Softmax attention (Vaswani et al. 2017), causal; the base of the softmax family.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + M) V,   M_ij = 0 if j <= i else -inf

Variants of the family (sliding window, sparse, ALiBi) change only the score bias M, written as
a function of absolute query/key positions, `allowed(q_pos, k_pos)` or `score_bias(q_pos,
k_pos)`; that one function serves training, the weights shown, and decoding with a KV cache.

The fast path of plain causal attention is `F.scaled_dot_product_attention(is_causal=True)`
(flash / memory-efficient kernels where available); the explicit masked softmax runs only when
weights are requested.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from attn_lightning.attention.base import CausalSelfAttention
from attn_lightning.attention.kv_cache import KVCache, StaticKVCache


class VanillaAttention(CausalSelfAttention):
    """Exact causal softmax attention."""

    # M is the causal mask alone, so SDPA's is_causal fast path applies; derived per class:
    # a subclass that overrides `allowed` or `score_bias` gets its own mask honoured.
    is_plain_causal: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        base = VanillaAttention
        cls.is_plain_causal = cls.allowed is base.allowed and cls.score_bias is base.score_bias

    def allowed(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """(Tq, Tk) boolean: may the query at q_pos[i] attend to the key at k_pos[j]?"""
        return k_pos[None, :] <= q_pos[:, None]

    def score_bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """Additive bias M (1 or H, Tq, Tk): 0 where allowed, -inf elsewhere."""
        allowed = self.allowed(q_pos, k_pos)
        return torch.zeros(allowed.shape, device=q_pos.device).masked_fill(~allowed, -math.inf)[
            None
        ]

    def softmax_attend(
        self, q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, k_pos: Tensor
    ) -> Tensor:
        """softmax(q k^T / sqrt(d) + M) v for queries/keys at the given absolute positions."""
        if self.is_plain_causal and q_pos.numel() == 1:  # one new token sees every cached key
            return F.scaled_dot_product_attention(q, k, v)
        if self.is_plain_causal and q_pos[0] == k_pos[0] and q_pos.numel() == k_pos.numel():
            return F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout_p, is_causal=True)
        bias = self.score_bias(q_pos, k_pos).to(q.dtype)  # (1 or H, Tq, Tk)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.dropout_p)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None) -> Tensor:
        pos = torch.arange(q.size(2), device=q.device)
        return self.softmax_attend(q, k, v, pos, pos)

    def attention_matrix(self, q: Tensor, k: Tensor, g: Tensor | None = None) -> Tensor:
        pos = torch.arange(q.size(2), device=q.device)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, T, T)
        return F.softmax(scores + self.score_bias(pos, pos), dim=-1)

    def _new_core_cache(self) -> KVCache:
        return KVCache(self.block_size)

    def _new_static_core_cache(self) -> StaticKVCache | None:
        """Compiled decoding's cache: block_size preallocated positions, a step attending over
        those held, masked by `score_bias` (exact for every mask and bias of the family). None
        for a subclass with its own cache or decode (sliding window keeps a window)."""
        return StaticKVCache(self.block_size) if self._decodes_as(VanillaAttention) else None

    def decode(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        cache: KVCache | StaticKVCache,
        g: Tensor | None = None,
    ) -> Tensor:
        k_all, v_all = cache.update(k, v)  # (B, H_kv, T_k, D)
        k_all, v_all = self._repeat_kv(k_all), self._repeat_kv(v_all)
        if isinstance(cache, StaticKVCache):  # the slots held; the mask: those after q (prefill)
            k_pos = cache.key_positions(k_all.size(2), q.device)
            bias = self.score_bias(cache.query_positions(), k_pos).to(q.dtype)  # (1 or H, T, L)
            return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=bias)
        if self.is_plain_causal and q.size(2) == 1:  # one new token sees every cached key
            return F.scaled_dot_product_attention(q, k_all, v_all)
        k_pos = cache.key_positions(k_all.size(2), q.device)
        return self.softmax_attend(q, k_all, v_all, k_pos[-q.size(2) :], k_pos)
