"""Exact causal linear attention, chunked, as one autograd Function whose backward recomputes.

For features q, k (B, H, T, M), values v (B, H, T, D) and a carried state (S_0, z_0):

    y_i = n_i / max(d_i + eps, tiny),   n_i = Σ_{j<=i} (q_i·k_j) v_j + q_i S_0,
                                        d_i = Σ_{j<=i}  q_i·k_j      + q_i·z_0

Chunked by C positions, per chunk n with the states S_n = S_0 + Σ_{m<n} K_m^T V_m (M x D)
and z_n = z_0 + Σ_{m<n} K_m^T 1 (M):

    N_n = A_n V_n + Q_n S_n,   d_n = A_n 1 + Q_n z_n,   A_n = tril(Q_n K_n^T)

and the gradients, with g = dy / d (the numerator's) and h = -(dy·y) / d (the normaliser's),
P_n = tril(g_n V_n^T + h_n 1^T) and the anti-causal states of the later chunks
R_n = Σ_{m>n} Q_m^T g_m, r_n = Σ_{m>n} Q_m^T h_m:

    dQ_n = P_n K_n + g_n S_n^T + h_n z_n^T
    dK_n = P_n^T Q_n + V_n R_n^T + 1 r_n^T
    dV_n = A_n^T g_n + K_n R_n

Why one Function rather than autograd on the obvious tensor code: at training sizes its
(B, H, N, C, C) temporaries are large, and glibc's malloc returns large freed blocks to the
system, so every fresh one faults its pages in again; on a CPU each op then pays page faults
and a trip through memory; the masked products are stored for the backward; and a ones
column appended to v (for d) copies v. Here the C x C products are formed one slab of chunks
at a time into reused cache-sized buffers (`out=`, in place), the backward recomputes them
instead of storing them (it keeps the inputs, y, d and the (N, M, D) chunk states: memory
linear in T), and the normaliser (from the running key-feature sum z) and the division happen
on the slab in cache. The products are chunk-shaped (a small inner dimension M or D), which a
matmul library runs well below its peak, so the elementwise work around them counts as much
as their arithmetic: it is fused into the slab loop rather than left to separate passes.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

SLAB_BYTES = 1 << 20  # of C x C scores per slab: cache-sized


def _slab_size(chunk_size: int) -> int:
    return max(1, SLAB_BYTES // (4 * chunk_size * chunk_size))


def chunk_rows(x: Tensor, chunk_size: int) -> Tensor:
    """(B, H, T, F) -> contiguous (B*H*N, C, F), zero-padded to whole chunks (zero features
    contribute nothing)."""
    B, H, T, _ = x.shape
    pad = (-T) % chunk_size
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
    return x.reshape(B * H * ((T + pad) // chunk_size), chunk_size, x.size(-1)).contiguous()


def _exclusive_cumsum(x: Tensor, reverse: bool, initial: Tensor | None = None) -> Tensor:
    """x (R, N, ...) -> initial (R, ...) or 0 plus the sum over the chunks strictly before
    (after, if reverse) each one. A loop of N in-place adds: torch's CPU cumsum along a
    non-last dim is several times slower, and N = T / C is small."""
    out = torch.empty_like(x)
    N = x.size(1)
    order = range(N - 1, -1, -1) if reverse else range(N)
    first = order[0]
    if initial is None:
        out[:, first].zero_()
    else:
        out[:, first].copy_(initial)
    for prev, n in itertools.pairwise(order):
        torch.add(out[:, prev], x[:, prev], out=out[:, n])
    return out


class _ChunkedLinearAttention(torch.autograd.Function):
    """y = normalised causal product, in chunks (module docstring); returns y (R*N, C, D)
    and the final states S (R, M, D), z (R, M), the latter not differentiable."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        S0: Tensor | None,
        z0: Tensor | None,
        rows: int,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        chunks, C, M = q.shape
        D = v.size(-1)
        S_written = torch.bmm(k.transpose(1, 2), v).view(rows, -1, M, D)  # K_n^T V_n
        z_written = k.sum(1).view(rows, -1, M)  # K_n^T 1
        S, z = _exclusive_cumsum(S_written, False, S0), _exclusive_cumsum(z_written, False, z0)
        S_flat, z_flat = S.view(chunks, M, D), z.view(chunks, M, 1)
        mask = torch.ones(C, C, dtype=q.dtype, device=q.device).tril()
        y, d = torch.empty_like(v), q.new_empty(chunks, C, 1)
        step = _slab_size(C)
        scores = q.new_empty(min(step, chunks), C, C)
        tiny = torch.finfo(q.dtype).tiny
        for start in range(0, chunks, step):
            s = slice(start, min(start + step, chunks))
            a = torch.bmm(q[s], k[s].transpose(1, 2), out=scores[: s.stop - s.start]).mul_(mask)
            torch.sum(a, -1, keepdim=True, out=d[s]).baddbmm_(q[s], z_flat[s])
            d[s].add_(eps).clamp_min_(tiny)
            torch.bmm(a, v[s], out=y[s]).baddbmm_(q[s], S_flat[s]).div_(d[s])
        ctx.save_for_backward(q, k, v, y, d, S, z)
        ctx.rows, ctx.eps, ctx.carried = rows, eps, S0 is not None
        S_final = S[:, -1] + S_written[:, -1]
        z_final = z[:, -1] + z_written[:, -1]
        ctx.mark_non_differentiable(S_final, z_final)
        return y, S_final, z_final

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, dy: Tensor, _dS: Tensor, _dz: Tensor
    ) -> tuple[Tensor | None, ...]:
        q, k, v, y, d, S, z = ctx.saved_tensors
        rows = ctx.rows
        chunks, C, M = q.shape
        D = v.size(-1)
        g = dy / d  # (chunks, C, D) the numerator's gradient
        h = (dy * y).sum(-1, keepdim=True).div_(d).neg_()  # (chunks, C, 1) the normaliser's
        h.masked_fill_(d <= torch.finfo(d.dtype).tiny, 0)  # clamped: no gradient through d
        R_read = torch.bmm(q.transpose(1, 2), g).view(rows, -1, M, D)  # Q_n^T g_n
        r_read = torch.bmm(q.transpose(1, 2), h).view(rows, -1, M)  # Q_n^T h_n
        R, r = _exclusive_cumsum(R_read, True), _exclusive_cumsum(r_read, True)
        S_flat, z_flat = S.view(chunks, M, D), z.view(chunks, 1, M)
        R_flat, r_flat = R.view(chunks, M, D), r.view(chunks, 1, M)
        mask = torch.ones(C, C, dtype=q.dtype, device=q.device).tril()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        step = _slab_size(C)
        scores, grads = q.new_empty(min(step, chunks), C, C), q.new_empty(min(step, chunks), C, C)
        for start in range(0, chunks, step):
            s = slice(start, min(start + step, chunks))
            n = s.stop - s.start
            a = torch.bmm(q[s], k[s].transpose(1, 2), out=scores[:n]).mul_(mask)
            p = torch.bmm(g[s], v[s].transpose(1, 2), out=grads[:n]).add_(h[s]).mul_(mask)
            torch.bmm(p, k[s], out=dq[s]).baddbmm_(g[s], S_flat[s].transpose(1, 2)).baddbmm_(
                h[s], z_flat[s]
            )
            torch.bmm(p.transpose(1, 2), q[s], out=dk[s]).baddbmm_(
                v[s], R_flat[s].transpose(1, 2)
            ).add_(r_flat[s])
            torch.bmm(a.transpose(1, 2), g[s], out=dv[s]).baddbmm_(k[s], R_flat[s])
        dS0 = dz0 = None
        if ctx.carried:  # the initial state reaches every chunk
            dS0, dz0 = R[:, 0] + R_read[:, 0], r[:, 0] + r_read[:, 0]
        return dq, dk, dv, dS0, dz0, None, None


def chunked_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    chunk_size: int,
    eps: float,
    S0: Tensor | None = None,
    z0: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """q, k (B, H, T, M) features, v (B, H, T, D), the carried state S0 (B, H, M, D) and
    z0 (B, H, M) or None -> y (B, H, T, D) and the final states S (B, H, M, D), z (B, H, M)
    (not differentiable)."""
    B, H, T, M = q.shape
    D = v.size(-1)
    C = min(chunk_size, T)
    rows = B * H
    if S0 is not None:
        S0, z0 = S0.reshape(rows, M, D), z0.reshape(rows, M)  # type: ignore[union-attr]
    y, S, z = _ChunkedLinearAttention.apply(
        chunk_rows(q, C), chunk_rows(k, C), chunk_rows(v, C), S0, z0, rows, eps
    )
    return y.view(B, H, -1, D)[:, :, :T], S.view(B, H, M, D), z.view(B, H, M)
