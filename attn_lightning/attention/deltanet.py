"""DeltaNet (Schlag et al. 2021, "Linear Transformers Are Secretly Fast Weight Programmers";
chunked by Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule over
Sequence Length"), causal.

    S_t = S_{t-1} (I - β_t k_t k_t^T) + β_t v_t k_t^T,   o_t = S_t q_t,   β_t = σ(x_t W_β)

with q, k = SiLU(.) then L2-normalised per head. The state's answer to k_t, S_{t-1} k_t, moves a
fraction β_t of the way to v_t (β_t = 1 overwrites it) instead of adding v_t on top as linear
attention does. One write strength β per head and token, from the layer input; training uses the
chunked form, decoding the O(1)-per-token recurrent form (delta_rule.py). With
`allow_neg_eigval` (Grazzi et al. 2025), β_t = 2 σ(x_t W_β) in (0, 2): negative eigenvalues
1 - β_t of the transition along k_t.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from attn_lightning.attention.delta_rule import DeltaRuleAttention


class DeltaNet(DeltaRuleAttention):
    """The delta rule with a data-dependent write strength β_t in (0, 1) (or (0, 2)) per head."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.beta_proj = nn.Linear(self.n_embd, self.n_head, bias=False)  # W_β: C x H

    def gates(self, x: Tensor) -> Tensor:
        """(B, T, C) -> β (B, H, T, 1)."""
        return self.write_strength(self.beta_proj(x)).transpose(1, 2)[..., None]
