"""Nyströmformer (Xiong et al. 2021), made causal with landmarks of completed past segments.

Nyströmformer approximates softmax(Q K^T) by F Ã⁺ B with m landmarks q̃, k̃ (segment means of
Q and K): F = softmax(Q K̃^T), Ã = softmax(Q̃ K̃^T), B = softmax(Q̃ K^T), Ã⁺ by an iterative
pseudo-inverse. Segment means and the softmax over all keys in B mix future positions: as
published it is not causal.

Causal form here: the block of n = block_size positions is cut into m = num_landmarks
segments of s = n / m. Landmark l (q̃_l, k̃_l: means over segment l) exists once segment l is
complete, and everything about it looks backwards:

    B_lj  = softmax_j(q̃_l·k_j / √d)  over j in segments <= l
    Ã_ll' = softmax_l'(q̃_l·k̃_l' / √d) over l' <= l         (lower triangular, invertible)

Query i in segment g attends with one softmax to the landmarks l < g (weight of a landmark:
s·exp(q_i·k̃_l/√d), standing for its s keys) and exactly to its own segment's keys j <= i:

    a_i = softmax([q_i·k̃_l/√d + log s]_{l<g}, [q_i·k_j/√d]_{gs<=j<=i})
    y_i = Σ_{l<g} a_il (Ã⁻¹ B V)_l + Σ_j a_ij v_j

Ã⁻¹ comes from Newton–Schulz iterations Z ← Z(2I - ÃZ) started at diag(Ã)⁻¹: every iterate is
lower triangular (so landmark l never reads a later one), and the error is nilpotent, exact
after ceil(log2 m) iterations. Since Ã1 = 1 and B1 = 1, the rows of the equivalent matrix
sum to 1 (entries may be negative, as in Nyströmformer).

What it approximates: softmax attention to the past through a rank-(g) Nyström factorisation
with landmarks from completed segments; what it gives up: exact access to any single past token
outside the current segment, and the landmarks' view of their own segment is the mean of it.
The constructor refuses num_landmarks that does not divide block_size. Cost O(T (m + s)) per
head for the queries (segments.py), plus O(m T) for B. Decoding uses the base's fallback:
cache q, k, v and recompute the core over the window.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attn_lightning.attention.base import CausalSelfAttention
from attn_lightning.attention.segments import segment_attention, segment_weights
from attn_lightning.errors import ConfigError


def triangular_inverse(A: Tensor, iterations: int) -> Tensor:
    """Newton–Schulz inverse of lower-triangular (..., m, m) A, started at diag(A)^-1.

    Runs in float64 (m x m is small; the iteration amplifies rounding in float32)."""
    A64 = A.double()
    eye = torch.eye(A.size(-1), device=A.device, dtype=A64.dtype)
    Z = torch.diag_embed(1.0 / A64.diagonal(dim1=-2, dim2=-1))
    for _ in range(iterations):
        Z = Z @ (2 * eye - A64 @ Z)
    return Z.to(A.dtype)


class NystromAttention(CausalSelfAttention):
    """Causal Nyströmformer: landmarks from completed past segments + exact current segment."""

    def __init__(
        self, *args: Any, num_landmarks: int = 8, pinv_iterations: int = 6, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if not 1 <= num_landmarks <= self.block_size or self.block_size % num_landmarks != 0:
            raise ConfigError(
                f"causal Nyströmformer cuts block_size={self.block_size} into "
                f"num_landmarks={num_landmarks} segments: choose attention.num_landmarks "
                "dividing model.block_size"
            )
        if pinv_iterations < 0:
            raise ConfigError(f"attention.pinv_iterations must be >= 0, got {pinv_iterations}")
        self.num_landmarks = num_landmarks
        self.pinv_iterations = pinv_iterations
        self.segment = self.block_size // num_landmarks

    def _landmarks(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Landmark keys k̃ (B, H, m', D) and Ã⁻¹ B (B, H, m', T), m' = completed segments."""
        B, H, T, D = q.shape
        s, m = self.segment, T // self.segment
        scale = 1 / math.sqrt(D)
        q_lm = q[:, :, : m * s].view(B, H, m, s, D).mean(3)  # (B, H, m, D)
        k_lm = k[:, :, : m * s].view(B, H, m, s, D).mean(3)
        lm = torch.arange(m, device=q.device)
        b_mask = torch.arange(T, device=q.device)[None, :] // s <= lm[:, None]  # (m, T)
        B_lm = F.softmax((q_lm @ k.transpose(-2, -1) * scale).masked_fill(~b_mask, -math.inf), -1)
        a_mask = lm[None, :] <= lm[:, None]  # (m, m) lower triangular
        A = F.softmax((q_lm @ k_lm.transpose(-2, -1) * scale).masked_fill(~a_mask, -math.inf), -1)
        return k_lm, triangular_inverse(A, self.pinv_iterations) @ B_lm

    def attend(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None) -> Tensor:
        k_lm, ZB = self._landmarks(q, k)
        bias = math.log(self.segment)
        return segment_attention(q, k, v, k_lm, ZB @ v, self.segment, bias, self.dropout_p)

    def attention_matrix(self, q: Tensor, k: Tensor, g: Tensor | None = None) -> Tensor:
        k_lm, ZB = self._landmarks(q, k)
        w_lm, w_l = segment_weights(q, k, k_lm, self.segment, math.log(self.segment))
        return w_l + w_lm @ ZB
