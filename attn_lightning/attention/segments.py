"""Causal segment attention, shared by the causal Linformer and Nyströmformer.

Positions are cut into segments of s; segment l has a summary key/value pair (k̄_l, v̄_l),
built from segment l alone (and, for Nyströmformer, from earlier positions). Query i, in
segment g = i // s, attends with one softmax to the summaries of completed segments l < g and
exactly to the keys of its own segment up to itself:

    a_i = softmax([q_i·k̄_l/√d + b]_{l<g}, [q_i·k_j/√d]_{gs<=j<=i})
    y_i = Σ_{l<g} a_il v̄_l + Σ_{gs<=j<=i} a_ij v_j

(b: a log-weight of each summary, e.g. log s when a summary stands for s keys). The fast path
works segment by segment, O(T (n_seg + s)) scores; `segment_weights` materialises the same
weights with (T, T) masks for `return_attn` and as an independent reference in the tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def segment_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_sum: Tensor,
    v_sum: Tensor,
    segment: int,
    bias: float = 0.0,
    dropout_p: float = 0.0,
) -> Tensor:
    """q, k, v (B, H, T, D); summaries k_sum (B, H, n, D), v_sum (B, H, n, Dv) -> (B, H, T, Dv)."""
    B, H, T, D = q.shape
    s, n = segment, k_sum.size(2)
    pad = (-T) % s  # padded keys lie after every real query: the local mask hides them
    q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    N = (T + pad) // s
    seg = torch.arange(N, device=q.device)
    past = torch.arange(n, device=q.device)[None, :] < seg[:, None]  # (N, n)
    scores_sum = (q @ k_sum.transpose(-2, -1) / math.sqrt(D) + bias).view(B, H, N, s, n)
    scores_sum = scores_sum.masked_fill(~past[:, None, :], -math.inf)  # (B, H, N, s, n)
    qs, ks, vs = (x.view(B, H, N, s, x.size(-1)) for x in (q, k, v))
    local = torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
    scores_local = (qs @ ks.transpose(-2, -1) / math.sqrt(D)).masked_fill(~local, -math.inf)
    weights = F.softmax(torch.cat((scores_sum, scores_local), -1), dim=-1)  # (B, H, N, s, n+s)
    weights = F.dropout(weights, dropout_p) if dropout_p > 0 else weights
    w_sum, w_local = weights.split([n, s], dim=-1)
    y = w_sum.reshape(B, H, N * s, n) @ v_sum + (w_local @ vs).reshape(B, H, N * s, -1)
    return y[:, :, :T]


def segment_weights(
    q: Tensor, k: Tensor, k_sum: Tensor, segment: int, bias: float = 0.0
) -> tuple[Tensor, Tensor]:
    """The same weights, materialised: on summaries (B, H, T, n) and on keys (B, H, T, T)."""
    T, D, n = q.size(2), q.size(-1), k_sum.size(2)
    pos = torch.arange(T, device=q.device)
    seg = pos // segment
    past = torch.arange(n, device=q.device)[None, :] < seg[:, None]  # (T, n)
    local = (seg[:, None] == seg[None, :]) & (pos[None, :] <= pos[:, None])  # (T, T)
    scores_sum = (q @ k_sum.transpose(-2, -1) / math.sqrt(D) + bias).masked_fill(~past, -math.inf)
    scores_local = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(~local, -math.inf)
    weights = F.softmax(torch.cat((scores_sum, scores_local), -1), dim=-1)
    return weights.split([n, T], dim=-1)
