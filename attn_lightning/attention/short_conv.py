"""Short convolution: a depthwise causal 1-D convolution on the projected q, k and v.

    u'_t[c] = silu( Σ_{j=0}^{K-1} w[c, j] · u_{t-K+1+j}[c] ),   u_{<0} = 0

for every channel c of the qkv projection u (B, T, C) on its own (depthwise: no channel mixing),
reading only positions t-K+1..t (causal). Linear-attention models use it to give q, k and v a
little local context before the recurrence (H3, Based, and fla-org/flash-linear-attention's
GLA/DeltaNet layers with `use_short_conv`). As fla's `ShortConvolution` does by default: no
bias, SiLU after the convolution (Zoology's own mixer-level convolution has neither the SiLU
nor the causal cache, and its linear-attention layers take fla's).

Decoding keeps the last K-1 inputs of the layer (`ShortConvCache.conv`, (B, C, K-1)) next to
whatever the attention core caches, so a step continues the convolution exactly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attn_lightning.errors import ConfigError


class ShortConvolution(nn.Module):
    """Depthwise causal convolution of kernel size K over (B, T, C), then SiLU."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ConfigError(f"attention.short_conv must be >= 0 (0 = off), got {kernel_size}")
        self.kernel_size = kernel_size
        # (C, 1, K): one filter per channel; PyTorch's default (Kaiming-uniform) init, as fla
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=False)

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (B, T, C) continuing `state` (B, C, K-1), the previous inputs (None: zeros, the
        sequence starts here) -> output (B, T, C) and the state after x."""
        u = x.transpose(1, 2)  # (B, C, T)
        # (B, C, K-1+T): causal, the K-1 inputs before x (zeros at the start of a sequence)
        u = F.pad(u, (self.kernel_size - 1, 0)) if state is None else torch.cat((state, u), 2)
        y = F.silu(self.conv(u))  # (B, C, T): no padding inside, the K-1 prefix is explicit
        return y.transpose(1, 2), u[:, :, u.size(2) - (self.kernel_size - 1) :]


class ShortConvCache:
    """A layer's decoding cache when it has a short convolution: the core's own cache (what
    the variant's `_new_core_cache` made, `core`) and the convolution's last K-1 inputs (`conv`)."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.conv: Tensor | None = None  # (B, C, K-1), None before the first token

    @property
    def length(self) -> int:
        """Tokens the layer has seen (the core's count)."""
        return self.core.length
