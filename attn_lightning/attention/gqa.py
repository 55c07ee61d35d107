"""Grouped-query attention (Ainslie et al. 2023) and multi-query attention (Shazeer 2019).

    head h uses keys/values of group g(h) = h // (H / H_kv):
    out_h = softmax(Q_h K_g(h)^T / sqrt(d) + M) V_g(h)

Only H_kv key/value heads are projected and cached (H_kv = 1 is multi-query attention), which
shrinks the KV cache by H / H_kv; the base repeats them for the core. With H_kv = H it is
exactly vanilla attention.
"""

from __future__ import annotations

from typing import Any

from attn_lightning.attention.vanilla import VanillaAttention


class GroupedQueryAttention(VanillaAttention):
    """Causal softmax attention with n_kv_head key/value heads shared by groups of queries."""

    def __init__(self, *args: Any, n_kv_head: int, **kwargs: Any) -> None:
        super().__init__(*args, n_kv_head=n_kv_head, **kwargs)
