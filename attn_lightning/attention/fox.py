"""Forgetting Transformer (Lin, Nikishin, He & Courville, ICLR 2025, "Forgetting Transformer:
Softmax Attention with a Forget Gate"), causal: softmax attention whose score bias is written
by a data-dependent forget gate.

    o_i = Σ_{j<=i} softmax_j(q_i k_j / sqrt(d) + D_ij) v_j,   D_ij = Σ_{l=j+1}^{i} log f_l
    f_t = sigmoid(x_t w_f + b_f),   one gate per head and token

With c_t = Σ_{l<=t} log f_l, D_ij = c_i - c_j <= 0: the weight of key j decays by the gates
passed since it (f = 1 everywhere is softmax attention). The gates g = log f (B, H, T, 1) come
from the layer input (the base's `gates(x)`), one per query head (k/v heads may be grouped), with
w_f, b_f a linear map initialised as PyTorch's `nn.Linear` (as the paper's code and fla's layer).
c is summed in float32 at least. Training in float32 or float64 runs SDPA's fused kernel with
the bias as one more head dimension, in blocks of `query_block` queries (difference_bias.py):
no (T, T) tensor. Elsewhere (half precision, where that column would round to whole units; a
subclass that changes the mask; decoding) the bias D + M (M: the family's mask, vanilla.py's
`score_bias`) goes to SDPA as a (B, H, Tq, Tk) additive mask, formed in float32 and then cast,
so its near-diagonal entries stay exact. Decoding keeps a KV cache and each cached key's c_j,
so a new token's bias against the cached keys is exact.

The paper's "Pro" block adds an output gate and QK-norm: the base's `attention.output_gate` and
`attention.qk_norm`, not part of this core. FoX uses no position embedding (the gate is its
notion of distance): run it with `model.pos_embedding=none`, as ALiBi.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attn_lightning.attention.difference_bias import (
    checked_query_block,
    difference_bias_attention,
)
from attn_lightning.attention.kv_cache import KVCache, _extend
from attn_lightning.attention.vanilla import VanillaAttention


class ForgetKVCache(KVCache):
    """A KVCache that also keeps c_j = Σ_{l<=j} log f_l of every cached key, (B, H, T_k, 1)."""

    def __init__(self, max_len: int) -> None:
        super().__init__(max_len)
        self.c: Tensor | None = None

    def update_forget(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """The new tokens' log f summed from their first, c (B, H, T, 1) -> their c_t
        continuing the cached ones, and the c_j of every key held (B, H, T_k, 1)."""
        if self.c is not None:
            c = c + self.c[:, :, -1:]
        self.c = _extend(self.c, c, self.max_len)  # within block_size = max_len: no window
        return c, self.c


class ForgettingAttention(VanillaAttention):
    """Causal softmax attention with a forget-gate bias Σ log f over each (query, key) span."""

    def __init__(self, *args: Any, query_block: int = 256, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.query_block = checked_query_block(query_block)
        self.forget_gate = nn.Linear(self.n_embd, self.n_head)  # w_f, b_f: C x H

    def gates(self, x: Tensor) -> Tensor:
        """log f (B, H, T, 1) from x (B, T, C), in float32 at least."""
        logits = self.forget_gate(x)  # (B, T, H)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return F.logsigmoid(logits).transpose(1, 2)[..., None]

    def forget_bias(self, c_q: Tensor, c_k: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """D + M (B, H, Tq, Tk): c_i - c_j from c of the queries (B, H, Tq, 1) and of the keys
        (B, H, Tk, 1), plus the family's mask at the given absolute positions."""
        return (c_q - c_k.mT).add_(self.score_bias(q_pos, k_pos))  # one (B, H, Tq, Tk) tensor

    def attend(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None) -> Tensor:
        c = _cumulative(g, q)
        if self.is_plain_causal and q.dtype in (torch.float32, torch.float64):
            return difference_bias_attention(q, k, v, c, self.query_block, self.dropout_p)
        pos = torch.arange(q.size(2), device=q.device)
        bias = self.forget_bias(c, c, pos, pos).to(q.dtype)  # (B, H, T, T)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.dropout_p)

    def attention_matrix(self, q: Tensor, k: Tensor, g: Tensor | None = None) -> Tensor:
        c = _cumulative(g, q)
        pos = torch.arange(q.size(2), device=q.device)
        scores = (q @ k.mT) / math.sqrt(q.size(-1))  # (B, H, T, T)
        return F.softmax(scores + self.forget_bias(c, c, pos, pos).to(q.dtype), dim=-1)

    def _new_core_cache(self) -> ForgetKVCache:
        return ForgetKVCache(self.block_size)

    def decode(
        self, q: Tensor, k: Tensor, v: Tensor, cache: ForgetKVCache, g: Tensor | None = None
    ) -> Tensor:
        c_q, c_k = cache.update_forget(_cumulative(g, q))
        k_all, v_all = cache.update(k, v)  # (B, H_kv, T_k, D)
        k_pos = cache.key_positions(k_all.size(2), q.device)
        bias = self.forget_bias(c_q, c_k, k_pos[-q.size(2) :], k_pos).to(q.dtype)
        return F.scaled_dot_product_attention(
            q, self._repeat_kv(k_all), self._repeat_kv(v_all), attn_mask=bias
        )


def _cumulative(g: Tensor | None, q: Tensor) -> Tensor:
    """c_t = Σ_{l<=t} log f_l (B, H, T, 1) from the gates, in float32 or q's wider dtype."""
    if g is None:
        raise ValueError("forgetting attention needs its gates, log f: pass g = module.gates(x)")
    return g.to(torch.promote_types(q.dtype, torch.float32)).cumsum(2)
