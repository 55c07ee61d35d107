"""What every attention variant shares: projections, heads, dropout.

A variant subclasses `CausalSelfAttention` and implements only its core:

- `attend(q, k, v)`: the fast path, (B, H, T, D) tensors in and out;
- `attention_matrix(q, k)`: the equivalent (B, H, T, T) row-normalised matrix that the variant
  applies, materialised only when a caller asks for attention weights.

`forward(x, return_attn=True)` computes the output as `attention_matrix(q, k) @ v`, so the
weights a caller sees are exactly the ones that produced the output.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CausalSelfAttention(nn.Module, ABC):
    """Multi-head causal self-attention with a pluggable core."""

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        block_size: int,
        dropout: float = 0.0,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(
                f"n_embd={n_embd} is not divisible by n_head={n_head}: "
                "choose model.n_embd as a multiple of model.n_head"
            )
        self.n_embd = n_embd
        self.n_head = n_head
        self.head_dim = n_embd // n_head
        self.block_size = block_size
        self.dropout = dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)  # residual projection (scaled init)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, return_attn: bool = False) -> tuple[Tensor, Tensor | None]:
        """(B, T, C) -> (B, T, C), plus the (B, H, T, T) weights when `return_attn`."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        att = None
        if return_attn:
            att = self.attention_matrix(q, k)  # (B, H, T, T)
            y = self.attn_dropout(att) @ v
        else:
            y = self.attend(q, k, v)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y)), att

    @property
    def dropout_p(self) -> float:
        """Attention dropout probability for the fast path (zero in eval mode)."""
        return self.dropout if self.training else 0.0

    @abstractmethod
    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Causal attention output (B, H, T, D) from q, k, v (B, H, T, D)."""

    @abstractmethod
    def attention_matrix(self, q: Tensor, k: Tensor) -> Tensor:
        """The (B, H, T, T) row-normalised matrix this variant applies to v."""


def causal_mask(T: int, device: torch.device | None = None) -> Tensor:
    """(T, T) boolean mask, True where query i may attend to key j (j <= i)."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dim where `mask` is True; rows with no allowed key give zeros."""
    return F.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)
