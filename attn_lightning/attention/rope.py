"""Rotary position embedding (RoPE, Su et al. 2021), applied by the base to q and k.

Each pair of channels (x_2i, x_2i+1) at position p is rotated by the angle p·θ_i,
θ_i = base^(-2i/D):

    RoPE(x, p)_2i   = x_2i cos(pθ_i) - x_2i+1 sin(pθ_i)
    RoPE(x, p)_2i+1 = x_2i sin(pθ_i) + x_2i+1 cos(pθ_i)

so <RoPE(q, m), RoPE(k, n)> depends on m - n only: scores see relative positions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attn_lightning.errors import ConfigError


class RotaryEmbedding(nn.Module):
    """Rotates (B, H, T, D) tensors by their absolute positions (D must be even)."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2 != 0:
            raise ConfigError(f"RoPE needs an even head dimension, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (L, D/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        cos, sin = self.cos[positions].to(x.dtype), self.sin[positions].to(x.dtype)  # (T, D/2)
        x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, H, T, D/2)
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
