"""Softmax attention whose score bias is a difference of one term per position, causal:

    o_i = Σ_{j<=i} softmax_j(q_i k_j / sqrt(d) + c_i - c_j) v_j

FoX's forget gate (c = Σ log f) and ALiBi (c_t = -m t) are of this form. Within a row the c_i
cancels, so the bias is -c_j, a term of each key, and SDPA's fused kernel takes it as one more
head dimension, q̃_i = [q_i, sqrt(d)] and k̃_j = [k_j, c_r - c_j]: no (T, T) tensor, which an
additive mask would be. Rounding grows with |c_r - c_j| while the weights that matter have c_j
near c_i, so the queries go in blocks with c_r their block's first c: the biases of the keys
a block weighs are then bounded by what c moves across one block, and the far, large ones
weigh e^-(their size). Each block's keys carry their own bias column, (d + 1) / (2 block) of a
(T, T) bias's memory. Float32 and float64 only: half precision would round the column to whole
units (its callers keep an additive mask there).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attn_lightning.errors import ConfigError


def checked_query_block(block: int) -> int:
    """`attention.query_block` as given, or a ConfigError naming it."""
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ConfigError(f"attention.query_block={block!r} must be an integer >= 1")
    return block


def difference_bias_attention(
    q: Tensor, k: Tensor, v: Tensor, c: Tensor, block: int, dropout_p: float = 0.0
) -> Tensor:
    """softmax_j(q_i k_j / sqrt(d) + c_i - c_j) v_j over j <= i, q, k, v (B, H, T, d), c
    (B or 1, H or 1, T, 1) -> (B, H, T, d): `block` queries per SDPA call, the key bias
    c_r - c_j as a last head dimension (c_r: the block's first c), the causal mask additive. v
    is padded to d + 1 too, as SDPA's fused CPU kernel wants one head size for q, k and v.
    Every block's mask is a view of one (block, T) tensor, -inf where key j > T - block + row:
    the columns from T - end on hold the mask of the rows that end at `end`."""
    B, H, T, d = q.shape
    scale = 1 / math.sqrt(d)
    q_ext = torch.cat((q, q.new_full((B, H, T, 1), math.sqrt(d))), -1)  # meets the bias once
    v_ext = F.pad(v, (0, 1))
    c = c.to(q.dtype).expand(B, H, T, 1)  # float32 or float64: c keeps its precision
    rows = min(block, T)
    future = torch.ones(rows, T, dtype=torch.bool, device=q.device).triu_(T - rows + 1)
    masks = torch.zeros(rows, T, dtype=q.dtype, device=q.device).masked_fill_(future, -math.inf)
    outputs = []
    for start in range(0, T, block):
        end = min(T, start + block)
        k_ext = torch.cat((k[:, :, :end], c[:, :, start : start + 1] - c[:, :, :end]), -1)
        mask = masks[rows - (end - start) :, T - end :]  # (end - start, end)
        out = F.scaled_dot_product_attention(
            q_ext[:, :, start:end], k_ext, v_ext[:, :, :end], mask, dropout_p, scale=scale
        )
        outputs.append(out[..., :d])
    return torch.cat(outputs, 2)
