"""Fixed sparse attention (Child et al. 2019, "fixed" pattern), causal.

Positions are cut into blocks of length `block`; the last `summary` positions of each block
are its summary positions. Query i attends to key j <= i when

    j // block == i // block                  (local: same block)
    or  j % block >= block - summary          (strided: a summary position of an earlier block)

so information reaches across blocks through the summary cells. Both patterns share one
softmax (the union mask, as in the paper's single merged head). Decodes with a full KV cache.
"""

from __future__ import annotations

from typing import Any

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
