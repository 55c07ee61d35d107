"""Statistics of attention matrices A (B, H, T, T), row i = query i's weights over keys j <= i.

Each statistic is a mean over batch and queries, one value per head (H,):

    entropy      -Σ_j p_ij ln p_ij                  nats; 0 = one key, ln(i+1) = uniform
    distance     Σ_j p_ij (i - j)                   positions back the weight sits, on average
    local_ratio  Σ_{i-w < j <= i} p_ij              share of the weight on the last w positions
    softmax_gap  ½ Σ_j |A_ij - S_ij|                total variation from exact softmax S

Some variants' equivalent matrices hold small negative entries (Nyströmformer). Entropy,
distance and local ratio read each row as a distribution: negative entries are clamped to zero
and the row renormalised. The softmax gap uses the matrix as it is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOCAL_WINDOW = 4  # positions counted as "local" by default (conf/callbacks/default.yaml)


def as_distribution(att: Tensor) -> Tensor:
    """Rows clamped at zero and renormalised (rows of zeros stay zero), float32."""
    p = att.float().clamp_min(0.0)
    return p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)


def _query_mean(per_query: Tensor) -> Tensor:
    """(B, H, T) -> (H,): mean over batch and queries."""
    return per_query.mean(dim=(0, 2))


def entropy(att: Tensor) -> Tensor:
    """(B, H, T, T) -> (H,) mean entropy of the queries' attention distributions, in nats."""
    p = as_distribution(att)
    return _query_mean(-torch.special.xlogy(p, p).sum(-1))


def distance(att: Tensor) -> Tensor:
    """(B, H, T, T) -> (H,) mean attention distance: expected i - j under query i's weights."""
    T = att.size(-1)
    pos = torch.arange(T, device=att.device, dtype=torch.float32)
    offsets = pos[:, None] - pos[None, :]  # (T, T): i - j
    return _query_mean((as_distribution(att) * offsets).sum(-1))


def local_ratio(att: Tensor, window: int = LOCAL_WINDOW) -> Tensor:
    """(B, H, T, T) -> (H,) share of each query's weight on keys i - window < j <= i."""
    if window < 1:
        raise ValueError(f"local window must be >= 1, got {window}")
    T = att.size(-1)
    pos = torch.arange(T, device=att.device)
    offsets = pos[:, None] - pos[None, :]
    local = (offsets >= 0) & (offsets < window)
    return _query_mean((as_distribution(att) * local).sum(-1))


def exact_softmax(q: Tensor, k: Tensor) -> Tensor:
    """Causal softmax(q k^T / sqrt(d)) (B, H, T, T) in float32 from q, k (B, H, T, D): the
    reference every variant is compared with (analysis, callbacks, attention benchmark)."""
    T = q.size(2)
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.size(-1))
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()  # key j <= query i
    return F.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1).nan_to_num(0.0)


def softmax_gap(att: Tensor, exact: Tensor) -> Tensor:
    """(B, H, T, T) twice -> (H,) mean total-variation distance between the rows: 0 when the
    variant applies exact softmax attention, 1 when the two put their weight on disjoint keys."""
    return _query_mean(0.5 * (att.float() - exact.float()).abs().sum(-1))


def head_statistics(
    att: Tensor, exact: Tensor | None = None, window: int = LOCAL_WINDOW
) -> dict[str, Tensor]:
    """Every statistic of one layer, each (H,); `softmax_gap` only when `exact` is given."""
    stats = {
        "entropy": entropy(att),
        "distance": distance(att),
        "local_ratio": local_ratio(att, window),
    }
    if exact is not None:
        stats["softmax_gap"] = softmax_gap(att, exact)
    return stats


def scalar_metrics(
    layers: list[dict[str, Tensor]], per_head: tuple[str, ...] = ("entropy", "distance")
) -> dict[str, float]:
    """Metric names and values: `attn/<layer>/<stat>` (mean over heads) for every statistic,
    and `attn/<layer>/head<h>/<stat>` for the statistics named in `per_head`."""
    metrics: dict[str, float] = {}
    for layer, stats in enumerate(layers):
        for name, values in stats.items():
            metrics[f"attn/{layer}/{name}"] = float(values.mean())
            if name in per_head:
                for head, value in enumerate(values.tolist()):
                    metrics[f"attn/{layer}/head{head}/{name}"] = value
    return metrics
