"""Chunked linear attention with a decay per key channel (GLA; retention's scalar decay runs
expanded to the channels) as one autograd Function.

Per chunk of C positions, with b the cumulative log decay from the chunk's start (b_i includes
α_i), r = b_0 the first position's, E = exp(b - r) in [e^-40, 1] (decay_kernel.FACTOR_BOUND),
the scale s of q, and the state S_n entering the chunk:

    Q̃ = s q ⊙ E,   K̃ = k / E,   A = tril(Q̃ K̃^T)        (r cancels in every product)
    O = A V + (e^r ⊙ Q̃) S_n,    S_{n+1} = e^{b_C} ⊙_rows S_n + (e^{b_C - r} ⊙ K̃)^T V

and the gradients, with R_n = dS_{n+1} from the reverse scan dS_n = (e^r ⊙ Q̃)^T dO_n +
e^{b_C} ⊙_rows dS_{n+1}, R̃ = e^{b_C - r} ⊙_rows R, dA = tril(dO V^T):

    G_Q = dA K̃ + e^r ⊙ (dO S_n^T),   G_K = dA^T Q̃ + V R̃^T,   dV = A^T dO + K̃ R̃
    dq = s G_Q ⊙ E,   dk = G_K / E,
    db = dq ⊙ q - dk ⊙ k,  and at the chunk's last position also + Σ_v R ⊙ S_{n+1}

(the last term gathers e^{b_C}'s uses: the decayed keys' and the carried state's), then
d log α = the reverse cumulative sum of db within the chunk. The function does not depend on
r, so r takes no gradient.

Why not autograd on decay_kernel's tensor code: each of its elementwise steps (the decays'
exponentials, the decayed copies of q and k, the chunk scan's per-chunk ops) writes a fresh
(B, H, T, D) tensor that its backward reads and writes again: passes over memory that cost as
much as the products themselves. Here one exponential serves the forward and the backward,
the within-chunk cumulative sums are C in-place adds (torch's CPU cumsum along a middle dim is
slower), and the backward reuses the forward's A, Q̃, K̃, E and states instead of recomputing
them. Factorising around the chunk's first position r keeps E = exp(b - r) <= 1 and K̃ = k / E
bounded by e^FACTOR_BOUND, which is why decay_kernel.py takes this path only while a chunk's
decay stays within that bound.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx


def _chunk_cumsum(x: Tensor, reverse: bool) -> Tensor:
    """Cumulative sum (reverse: from the end) over dim 1 of x (X, C, K), in place."""
    C = x.size(1)
    order = range(C - 2, -1, -1) if reverse else range(1, C)
    step = 1 if reverse else -1
    for i in order:
        x[:, i].add_(x[:, i + step])
    return x


class ChunkedChannelDecay(torch.autograd.Function):
    """Chunks of rows (R * N, C, ·), the N chunks of each row consecutive: q, k (X, C, K),
    v (X, C, V), log α (X, C, K), the entering state S0 (R, K, V) or None, the rows R and the
    scale s of q -> O (X, C, V) and the final state (R, K, V), not differentiable."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        log_alpha: Tensor,
        S0: Tensor | None,
        rows: int,
        scale: float,
    ) -> tuple[Tensor, Tensor]:
        X, _, K = q.shape
        N, V = X // rows, v.size(-1)
        b = _chunk_cumsum(log_alpha.clone(), reverse=False)  # (X, C, K)
        first, last = b[:, :1].clone(), b[:, -1:]  # (X, 1, K)
        to_end = (last - first).exp_()  # e^{b_C - r}
        across = last.exp().view(rows, N, K, 1)  # e^{b_C}, scales the state's rows
        E = b.sub_(first).exp_()  # (X, C, K) e^{b - r}
        from_start = first.exp_()  # e^r
        q_t = torch.mul(q, E).mul_(scale)  # Q̃
        k_t = torch.div(k, E)  # K̃
        A = torch.bmm(q_t, k_t.mT).tril_()  # (X, C, C)
        out = torch.bmm(A, v)
        written = torch.bmm(k_t.mT, v).mul_(to_end.mT).view(rows, N, K, V)  # (e^{b_C-r} K̃)^T V
        states = q.new_empty(rows, N, K, V)  # S_n, entering each chunk
        if S0 is None:
            states[:, 0].zero_()
        else:
            states[:, 0].copy_(S0)
        for n in range(N - 1):
            torch.addcmul(written[:, n], across[:, n], states[:, n], out=states[:, n + 1])
        final = torch.addcmul(written[:, -1], across[:, -1], states[:, -1])
        out.baddbmm_(q_t * from_start, states.view(X, K, V))
        ctx.save_for_backward(q, k, v, E, q_t, k_t, A, states, from_start, to_end, across)
        ctx.rows, ctx.scale, ctx.carried = rows, scale, S0 is not None
        ctx.mark_non_differentiable(final)
        return out, final

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: FunctionCtx, d_out: Tensor, _d_final: Tensor
    ) -> tuple[Tensor | None, ...]:
        q, k, v, E, q_t, k_t, A, states, from_start, to_end, across = ctx.saved_tensors
        rows = ctx.rows
        X, _, K = q.shape
        N, V = X // rows, v.size(-1)
        # the reverse scan: R_n = dS_{n+1}; read = (e^r Q̃)^T dO_n is what chunk n adds to dS_n
        read = torch.bmm((q_t * from_start).mT, d_out).view(rows, N, K, V)
        R = torch.empty_like(read)
        R[:, -1].zero_()  # the final state takes no gradient
        for n in range(N - 1, 0, -1):
            torch.addcmul(read[:, n], across[:, n], R[:, n], out=R[:, n - 1])
        dS0 = torch.addcmul(read[:, 0], across[:, 0], R[:, 0]) if ctx.carried else None
        R_t = torch.mul(R, to_end.view(rows, N, K, 1), out=read).view(X, K, V)  # R̃

        dA = torch.bmm(d_out, v.mT).tril_()  # (X, C, C)
        dv = torch.bmm(A.mT, d_out).baddbmm_(k_t, R_t)
        dq = torch.bmm(d_out, states.view(X, K, V).mT).mul_(from_start).baddbmm_(dA, k_t)
        dq.mul_(E).mul_(ctx.scale)  # G_Q -> dq
        dk = torch.bmm(dA.mT, q_t).baddbmm_(v, R_t.mT).div_(E)  # G_K -> dk
        db = torch.mul(dq, q).addcmul_(dk, k, value=-1)
        # e^{b_C}'s uses: Σ_v R_n ⊙ S_{n+1} (R_{N-1} = 0, so S_N is not needed)
        last = db[:, -1].view(rows, N, K)
        last[:, :-1] += (R[:, :-1] * states[:, 1:]).sum(-1)
        return dq, dk, dv, _chunk_cumsum(db, reverse=True), dS0, None, None
