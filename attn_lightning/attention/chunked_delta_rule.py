"""The chunked delta rule (delta_rule.py's UT transform) as one autograd Function.

Per chunk of C positions, with Γ_ij = exp(b_i - b_j) (j <= i, else 0) from the cumulative log
decays b, γ_i = exp(b_i), ε_i = exp(b_C - b_i), g = exp(b_C) (all ones without decay):

    L = β ⊙_rows (K K^T ⊙ Γ) (strictly lower),  [U_0 | W] = (I + L)^{-1} [diag(β) V | diag(β γ) K]
    U_n = U_0 - W S_n,   O = diag(γ) Q S_n + (Q K^T ⊙ Γ) U_n,   S_{n+1} = g S_n + (ε ⊙ K)^T U_n

and, for dO (the carried states get no gradient: training starts from zero), with P = Q K^T ⊙ Γ,
a reverse scan dU_n = P^T dO_n + (ε ⊙ K) dS_{n+1}, dS_n = g dS_{n+1} + (γ ⊙ Q)^T dO_n - W^T dU_n,
then per chunk dW = -dU S_n^T, [dV' | dK'] = (I + L)^{-T} [dU | dW] (so dK' = -dV' S_n^T), and
dL = -[dV' | dK'] [U_0 | W]^T = -dV' U_n^T (strictly lower), and the products' gradients to Q,
K, V, β and b. The inverse (I + L)^{-1} is formed once (one triangular solve of C columns) and
kept: the forward's two products and the backward's transposed one are batched matmuls, where
solving [U_0 | W] and its gradient would be two triangular solves of 2 D columns, each with its
copies to LAPACK's layout.

Queries may sit at every s-th position only (s - 1, 2 s - 1, ..: a token that takes s delta
steps and is read after its last, gated_deltaproduct.py): Q, γ ⊙ Q, P = Q K^T ⊙ Γ and O then
have those C / s rows, and no work is spent on rows whose output nobody reads.

Costs that shaped the code: at training sizes a tensor of one state per chunk (N R K V
floats) is above the size from which glibc's malloc maps fresh pages at every allocation, so
each such tensor costs page faults on top of its work: only the forward's states are kept in
one; the reverse scan takes each dS_{n+1}'s uses (ε's and g's gradients) as it goes, with two
rolling states, and (γ ⊙ Q)^T dO_n enters it as one more product per step; its dots
S_n · dS_{n+1} (g's gradient) are vecdots (as a batched 1 x K V by K V x 1 matmul, a slow
matrix-vector call per row). Row dots (β's and b's gradients) are einsums, not a product
tensor then a sum; β and γ scale the inverse's
columns (C x C), not V's and K's rows (C x D); γ, ε and the decayed Q and K are saved, not
recomputed. The layout is chunk-major (chunk n of every row contiguous), so each of the T / C
sequential scan steps reads and writes one contiguous slab. Chunks are small (16 by default):
the solve and the masked products grow with C, the sequential scan with T / C.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _rows(x: Tensor, scale: Tensor) -> Tensor:
    """x (X, C, F) with each row i scaled by scale (X, C)."""
    return x * scale[..., None]


def _causal(C: int, like: Tensor) -> Tensor:
    """(C, C) bool, True where j <= i: what position i of a chunk sees."""
    return torch.ones(C, C, dtype=torch.bool, device=like.device).tril_()


def _mask_future(x: Tensor, read: slice) -> Tensor:
    """x (X, C / s, C) on the rows `read` of a chunk's C positions, zeroed in place where the
    column is later than its row's position."""
    C = x.size(-1)
    if x.size(-2) == C:
        return x.tril_()
    return x.mul_(_causal(C, x)[read])


def _row_dots(x: Tensor, y: Tensor) -> Tensor:
    """Σ_f x_cf y_cf (X, C) of x, y (X, C, F): one batched product, no (X, C, F) temporary."""
    return torch.einsum("xcf,xcf->xc", x, y)


def scan_chunks(
    U: Tensor, w: Tensor, k_end_t: Tensor, across: Tensor | None, S0: Tensor | None
) -> Tensor:
    """The sequential part of the chunked delta rule: each chunk's corrected values
    U_n = U_0 - W S_n, in place in U (N, R, C, V), and the state it leaves,
    S_{n+1} = g ⊙ S_n + (ε ⊙ K)^T U_n (g = `across`, broadcast over S's rows; 1 when None),
    from W = w (N, R, C, K), (ε ⊙ K)^T = k_end_t (N, R, K, C) and the entering state S0
    (R, K, V) or None (zero) -> the states entering each chunk and the final one
    (N + 1, R, K, V)."""
    N, R, _, V = U.shape
    starts = U.new_empty(N + 1, R, w.size(-1), V)
    if S0 is None:
        starts[0].zero_()
    else:
        starts[0].copy_(S0)
    for n in range(N):
        U[n].baddbmm_(w[n], starts[n], alpha=-1)
        if across is None:
            torch.baddbmm(starts[n], k_end_t[n], U[n], out=starts[n + 1])
        else:
            torch.mul(starts[n], across[n], out=starts[n + 1]).baddbmm_(k_end_t[n], U[n])
    return starts


def chunk_major_grads(
    shape: tuple[int, int, int, int, int],
    queries: int,
    dq: Tensor,
    dk: Tensor,
    dv: Tensor,
    d_beta: Tensor,
    d_decay: Tensor | None,
) -> tuple[Tensor | None, ...]:
    """What a chunk-major delta rule's backward returns, from shape = (N, R, C, K, V) and the
    queries per chunk: dq (N, R, queries, K), dk (N, R, C, K), dv (N, R, C, V) and dβ (N, R, C)
    viewed from their (X, ·, ·) forms, the decay's gradient as given, and none to the entering
    state."""
    N, R, C, K, V = shape
    return (
        dq.view(N, R, queries, K),
        dk.view(N, R, C, K),
        dv.view(N, R, C, V),
        d_beta.view(N, R, C),
        d_decay,
        None,
    )


class ChunkedDeltaRule(torch.autograd.Function):
    """Chunk-major inputs (chunk n of every row contiguous, for the scan): k (N, R, C, K),
    v (N, R, C, V), β (N, R, C), cumulative log decays b (N, R, C) or None, the entering
    state S0 (R, K, V) or None, and the queries q (N, R, C / s, K) of every s-th position of
    each chunk (positions s - 1, 2 s - 1, ..; s = 1: all) -> O (N, R, C / s, V) at those
    positions and the final state (not differentiable)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, q: Tensor, k: Tensor, v: Tensor, beta: Tensor, b: Tensor | None, S0: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        N, R, C, K = k.shape
        V, Cq = v.size(-1), q.size(2)
        read = slice(C // Cq - 1, None, C // Cq)  # the positions the queries read
        q, k, v = (x.reshape(N * R, -1, x.size(-1)) for x in (q, k, v))
        beta = beta.reshape(N * R, C)  # (X, C), X = N * R chunks
        kk, P = k @ k.mT, q @ k.mT  # (X, C, C), (X, Cq, C)
        if b is None:  # Γ is the causal mask; the solve needs none (it reads the strict lower)
            _mask_future(P, read)
            gamma = to_end = decay = None
            q_start, k_end = q, k
        else:
            b = b.reshape(N * R, C)
            decay = (b[:, :, None] - b[:, None, :]).masked_fill_(~_causal(C, q), -torch.inf).exp_()
            kk.mul_(decay)
            P.mul_(decay[:, read])
            gamma, to_end = b.exp(), (b[:, -1:] - b).exp()
            q_start, k_end = _rows(q, gamma[:, read]), _rows(k, to_end)
        # kk is now K K^T ⊙ Γ (lower) and P = Q K^T ⊙ Γ (the queries' rows)
        eye = torch.eye(C, dtype=q.dtype, device=q.device).expand(N * R, C, C)
        inverse = torch.linalg.solve_triangular(
            _rows(kk, beta), eye, upper=False, unitriangular=True
        )
        # β (and γ) scale the inverse's columns, (X, C, C), not the rows of V and K
        scaled = inverse * beta[:, None, :]
        U = scaled @ v  # U_0 = (I + L)^{-1} diag(β) V (X, C, V), made U_n in place by the scan
        w = (scaled if gamma is None else scaled.mul_(gamma[:, None, :])) @ k  # (X, C, K)
        del scaled
        U_n, w_n, k_end_t = U.view(N, R, C, V), w.view(N, R, C, K), k_end.view(N, R, C, K).mT

        across = None if gamma is None else gamma[:, -1].view(N, R, 1, 1)  # g = γ_C
        starts = scan_chunks(U_n, w_n, k_end_t, across, S0)  # U_n made in place
        final, starts = starts[N].clone(), starts[:N].view(N * R, K, V)
        out = (P @ U).baddbmm_(q_start, starts)  # (X, Cq, V)
        ctx.save_for_backward(
            q, k, v, beta, gamma, to_end, q_start, k_end, decay, kk, P, inverse, w, U, starts
        )
        ctx.shape = (N, R, C, K, V)
        ctx.mark_non_differentiable(final)
        return out.view(N, R, Cq, V), final

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, d_out: Tensor, _d_state: Tensor
    ) -> tuple[Tensor | None, ...]:
        q, k, v, beta, gamma, to_end, q_start, k_end, decay, kk, P, inverse, w, U, starts = (
            ctx.saved_tensors
        )
        N, R, C, K, V = ctx.shape
        Cq = q.size(1)
        read = slice(C // Cq - 1, None, C // Cq)
        dO = d_out.reshape(N * R, Cq, V)
        gated = gamma is not None
        across = gamma[:, -1].view(N, R, 1, 1) if gated else None

        # the reverse scan: dU_n and the state gradient dS_{n+1} reaching each chunk n,
        # dU_n = P^T dO_n + (ε ⊙ K) dS_{n+1},  dS_n = g dS_{n+1} + (γ ⊙ Q)^T dO_n - W^T dU_n;
        # dS_{n+1}'s other uses (ε's and g's gradients) are taken in the scan: two rolling
        # states instead of a tensor of all of them
        dU = (P.mT @ dO).view(N, R, C, V)
        k_end_n, w_t = k_end.view(N, R, C, K), w.view(N, R, C, K).mT
        q_start_t, dO_n = q_start.view(N, R, Cq, K).mT, dO.view(N, R, Cq, V)
        U_n, starts_n = U.view(N, R, C, V), starts.view(N, R, K * V)
        d_k_end = q.new_empty(N, R, C, K)  # U_n dS_{n+1}^T, to ε ⊙ K
        d_across = q.new_empty(N, R) if gated else None  # S_n · dS_{n+1}, to g
        dS, dS_before = q.new_zeros(R, K, V), q.new_empty(R, K, V)  # dS_{n+1}, dS_n
        for n in range(N - 1, -1, -1):
            torch.bmm(U_n[n], dS.mT, out=d_k_end[n])
            if d_across is not None:
                torch.linalg.vecdot(starts_n[n], dS.view(R, K * V), out=d_across[n])
            dU[n].baddbmm_(k_end_n[n], dS)
            if n == 0:  # dS_0 would reach only S0, which gets no gradient
                break
            if across is None:
                torch.baddbmm(dS, q_start_t[n], dO_n[n], out=dS_before)
            else:
                torch.mul(dS, across[n], out=dS_before).baddbmm_(q_start_t[n], dO_n[n])
            dS_before.baddbmm_(w_t[n], dU[n], alpha=-1)
            dS, dS_before = dS_before, dS
        dU, d_k_end = dU.view(N * R, C, V), d_k_end.view(N * R, C, K)

        # O = diag(γ) Q S_n + P U, P = Q K^T ⊙ Γ (the queries' rows)
        dP = dO @ U.mT  # (X, Cq, C)
        d_decay_q = dP * P if gated else None  # dΓ ⊙ Γ on the queries' rows, through P
        # in place: dP is not needed again
        d_qk = dP.mul_(decay[:, read]) if gated else _mask_future(dP, read)
        d_q_start = dO @ starts.mT  # (X, Cq, K)
        db_q = _row_dots(q_start, d_q_start) if gated else None  # through γ in diag(γ) Q
        dq = (d_q_start.mul_(gamma[:, read, None]) if gated else d_q_start).baddbmm_(d_qk, k)
        # S_{n+1} = g S_n + (ε ⊙ K)^T U_n; dk accumulates in d_k_end's buffer (one fewer)
        d_to_end = _row_dots(k_end, d_k_end) if gated else None  # through ε
        dk = (d_k_end.mul_(to_end[..., None]) if gated else d_k_end).baddbmm_(d_qk.mT, q)
        # U = U_0 - W S_n, then [U_0 | W] = (I + L)^{-1} [diag(β) V | diag(β γ) K]:
        # d[U_0 | W] = [dU | -dU S_n^T], d_rhs = (I + L)^{-T} d[U_0 | W], so d_rhs_k = -m with
        # m = d_rhs_v S_n^T, and dL = -(d_rhs_v U_0^T + d_rhs_k W^T) = -d_rhs_v (U_0 - W S_n)^T
        # = -d_rhs_v U^T (strictly lower): neither U_0 nor a product with W is needed
        d_rhs_v = inverse.mT @ dU
        m = d_rhs_v @ starts.mT  # (X, C, K)
        dL = (d_rhs_v @ U.mT).tril_(-1).neg_()
        k_dot_rhs = _row_dots(k, m).neg_()  # k_i · d_rhs_k_i (X, C)
        beta_gamma = beta * gamma if gated else beta
        dk.addcmul_(m, beta_gamma[..., None], value=-1)
        # L = β ⊙_rows (K K^T ⊙ Γ); kk holds K K^T ⊙ Γ
        dL_products = dL * kk
        d_beta = _row_dots(v, d_rhs_v) + dL_products.sum(-1)
        d_beta += k_dot_rhs * gamma if gated else k_dot_rhs
        dv = d_rhs_v.mul_(beta[..., None])
        d_kk = (dL.mul_(decay) if gated else dL).mul_(beta[..., None])  # d(K K^T) = β dL ⊙ Γ
        dk.baddbmm_(d_kk + d_kk.mT, k)

        db = None
        if gated:  # b enters through Γ, γ, ε and g = γ_C
            d_decay = dL_products.mul_(beta[..., None])  # dΓ ⊙ Γ, its part through L
            d_decay[:, read] += d_decay_q
            db = d_decay.sum(-1) - d_decay.sum(-2)
            db[:, read] += db_q
            db += beta_gamma * k_dot_rhs  # through γ in diag(β γ) K
            db -= d_to_end  # through ε_i = exp(b_C - b_i)
            db[:, -1] += d_to_end.sum(-1) + d_across.view(N * R) * gamma[:, -1]  # through g
            db = db.view(N, R, C)
        return chunk_major_grads(ctx.shape, Cq, dq, dk, dv, d_beta, db)
