"""Fixed sparse attention (Child et al. 2019, "fixed" pattern), causal.

Positions are cut into blocks of length `block`; the last `summary` positions of each block
are its summary positions. Query i attends to key j <= i when

    j // block == i // block                  (local: same block)
    or  j % block >= block - summary          (strided: a summary position of an earlier block)

so information reaches across blocks through the summary cells. Both patterns share one
softmax (the union mask, as in the paper's single merged head). Decodes with a full KV cache.

Training gives each block of queries, as its keys, the summary positions of every block and
then its own positions, all blocks in one SDPA call whose mask keeps the summaries of earlier
blocks and the block's own positions up to each query: T (T s / block + block) scores, not
T^2 / 2, and no (T, T) mask (the weights shown still use one).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attn_lightning.attention.vanilla import VanillaAttention
from attn_lightning.errors import ConfigError


class SparseAttention(VanillaAttention):
    """Causal softmax attention with the fixed local + strided-summary sparsity pattern."""

    def __init__(self, *args: Any, block: int = 16, summary: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if block < 1 or not 1 <= summary <= block:
            raise ConfigError(
                f"attention.block={block} must be >= 1 and attention.summary={summary} in 1..block"
            )
        self.block = block
        self.summary = summary

    def allowed(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        causal = k_pos[None, :] <= q_pos[:, None]  # (Tq, Tk)
        local = (k_pos[None, :] // self.block) == (q_pos[:, None] // self.block)
        summary = (k_pos % self.block >= self.block - self.summary)[None, :]
        return causal & (local | summary)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None) -> Tensor:
        if type(self).allowed is not SparseAttention.allowed or q.size(2) <= self.block:
            return super().attend(q, k, v, g)  # a subclass's own mask; or one block
        return block_sparse_attention(q, k, v, self.block, self.summary, self.dropout_p)


def block_sparse_attention(
    q: Tensor, k: Tensor, v: Tensor, block: int, summary: int, dropout_p: float = 0.0
) -> Tensor:
    """The fixed pattern, q, k, v (B, H, T, d) -> (B, H, T, d), with n blocks of β = `block`
    positions (T padded to n β): block b's keys are the s = `summary` last positions of all n
    blocks, then its own β; it may use the summaries of blocks before b and its own positions
    up to each query (so padding, at the end, reaches no real query)."""
    B, H, T, d = q.shape
    β, s, n = block, summary, math.ceil(T / block)
    end = n * β - T

    def blocks(x: Tensor) -> Tensor:  # (B, H, T, d) -> (B H, n, β, d)
        return F.pad(x, (0, 0, 0, end)).reshape(B * H, n, β, d)

    def keys_of_blocks(x: Tensor) -> Tensor:  # -> (B H, n, n s + β, d): summaries, then own
        own = blocks(x)
        summaries = own[:, :, β - s :].reshape(B * H, 1, n * s, d).expand(-1, n, -1, -1)
        return torch.cat((summaries, own), 2)

    device = q.device
    earlier = torch.arange(n * s, device=device) // s < torch.arange(n, device=device)[:, None]
    causal = torch.ones(β, β, dtype=torch.bool, device=device).tril_()
    allowed = torch.cat((earlier[:, None, :].expand(n, β, n * s), causal.expand(n, β, β)), -1)
    mask = torch.zeros(1, *allowed.shape, dtype=q.dtype, device=device)
    mask.masked_fill_(~allowed, -math.inf)  # (1, n, β, n s + β), 4-D for the fused kernel
    out = F.scaled_dot_product_attention(
        blocks(q), keys_of_blocks(k), keys_of_blocks(v), mask, dropout_p
    )
    return out.reshape(B, H, n * β, d)[:, :, :T]
