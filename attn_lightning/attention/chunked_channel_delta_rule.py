"""The chunked delta rule with a decay per key channel (KDA's, Kimi Linear 2025) as one
autograd Function: chunked_delta_rule.py's UT transform with diag(α_t) in place of α_t.

Per chunk of C positions, with b (C, K) the cumulative log decays from the chunk start (b_1 =
log α_1), the decay from the first position E_i = exp(b_i - b_1), the first position's own
a = exp(b_1) (so γ_i = a E_i from the chunk start, ε_i = E_C / E_i to its end, g = a E_C
across it; all per channel), the delta rule S_t = (I - β_t k_t k_t^T) diag(α_t) S_{t-1} +
β_t k_t v_t^T over the chunk is

    L = β ⊙_rows (K_e K_d^T) (strictly lower),   P = tril(Q_e K_d^T),
        Q_e = Q ⊙ E,  K_e = K ⊙ E,  K_d = K / E   (Σ_d k_id k_jd E_id / E_jd: the decay j -> i)
    [U_0 | W] = (I + L)^{-1} [diag(β) V | diag(β) (a ⊙ K_e)],   U_n = U_0 - W S_n
    O = (a ⊙ Q_e) S_n + P U_n,   S_{n+1} = g ⊙_rows S_n + (E_C ⊙ K_d)^T U_n

so the decays within a chunk cost three scaled copies and no (C, C, K) tensor (as GLA's chunked
form, chunked_channel_decay.py). 1 / E stays below e^FACTOR_BOUND while a chunk decays by at
most e^-FACTOR_BOUND after its first position: delta_rule.py picks a chunk size that keeps it
so. a and g below e^-FACTOR_BOUND are taken as 0: what the past adds to the chunk is then below
float32's and float64's resolution, and left in, it leaves subnormal floats in the scaled
queries, keys and states, on which CPU arithmetic is many times slower (the whole scan, 7x
measured with a strong decay).

The backward is chunked_delta_rule.py's with the per-channel factors: the reverse scan
dU_n = P^T dO_n + (E_C ⊙ K_d) dS_{n+1}, dS_n = g ⊙_rows dS_{n+1} + (a ⊙ Q_e)^T dO_n - W^T dU_n,
then d_rhs_v = (I + L)^{-T} dU, m = d_rhs_v S_n^T, dL = -d_rhs_v U^T (strictly lower); the
scaled copies take their products' gradients, log E_i = b_i - b_1 the sum of x ⊙ dx over
Q_e, K_e and -(K_d ⊙ dK_d), log a = b_1 and log E_C = b_C - b_1 their uses' (g = a E_C in
both), and the cumulative sums b of the log decays are taken in place within the chunk, forward
and (reversed) backward.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attn_lightning.attention.chunked_channel_decay import _chunk_cumsum
from attn_lightning.attention.chunked_delta_rule import chunk_major_grads, scan_chunks

FACTOR_BOUND = 40.0  # the decay within a chunk, e^-FACTOR_BOUND at most (1 / E's bound)
SMALLEST_DECAY = math.exp(-FACTOR_BOUND)  # a and g below it are taken as 0


def _row_dots(x: Tensor, y: Tensor) -> Tensor:
    """Σ_f x_cf y_cf (X, C) of x, y (X, C, F)."""
    return torch.einsum("xcf,xcf->xc", x, y)


def _column_dots(x: Tensor, y: Tensor) -> Tensor:
    """Σ_c x_ck y_ck (X, K) of x, y (X, C, K): a sum over the chunk's positions (an einsum
    would copy both to a (X, K, C) layout first)."""
    return torch.linalg.vecdot(x, y, dim=1)


def _cumulative_sums(x: Tensor) -> Tensor:
    """The cumulative sums over dim 1 of x (X, C, K), into a new tensor: C adds, each element
    written once (torch's CPU cumsum along a middle dim is slower; a copy then sums in place
    writes twice)."""
    sums = torch.empty_like(x)
    sums[:, 0] = x[:, 0]
    for i in range(1, x.size(1)):
        torch.add(sums[:, i - 1], x[:, i], out=sums[:, i])
    return sums


def _flushed(decay: Tensor) -> Tensor:
    return decay.masked_fill_(decay < SMALLEST_DECAY, 0.0)


class ChunkedChannelDeltaRule(torch.autograd.Function):
    """Chunk-major inputs (chunk n of every row contiguous): q, k (N, R, C, K), v (N, R, C, V),
    β (N, R, C), log decays log α (N, R, C, K) <= 0 whose sum over positions 2..C of every chunk
    is >= -FACTOR_BOUND, the entering state S0 (R, K, V) or None -> O (N, R, C, V) and the
    final state (not differentiable)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        beta: Tensor,
        log_alpha: Tensor,
        S0: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        N, R, C, K = k.shape
        V = v.size(-1)
        X = N * R  # chunks
        q, k, v = (x.reshape(X, C, -1) for x in (q, k, v))
        beta = beta.reshape(X, C)
        b = _cumulative_sums(log_alpha.reshape(X, C, K))  # (X, C, K)
        first = b[:, :1].clone()  # b_1 (X, 1, K)
        E = b.sub_(first).exp_()  # (X, C, K) e^(b - b_1) in [e^-FACTOR_BOUND, 1]
        a = _flushed(first.exp_())  # e^(b_1)
        E_C = E[:, -1:]
        q_e, k_e, k_d = q * E, k * E, k / E
        kk = k_e @ k_d.mT  # (X, C, C) Σ_d k_i k_j e^(b_i - b_j), read below the diagonal
        P = (q_e @ k_d.mT).tril_()  # Σ_d q_i k_j e^(b_i - b_j), j <= i
        q_start, k_gamma, k_end = q_e * a, k_e * a, k_d * E_C  # γ ⊙ Q, γ ⊙ K, ε ⊙ K
        eye = torch.eye(C, dtype=q.dtype, device=q.device).expand(X, C, C)
        inverse = torch.linalg.solve_triangular(
            kk * beta[..., None], eye, upper=False, unitriangular=True
        )  # (I + L)^{-1}
        scaled = inverse * beta[:, None, :]  # (I + L)^{-1} diag(β)
        U = scaled @ v  # U_0 (X, C, V), made U_n in place by the scan
        w = scaled @ k_gamma  # W (X, C, K)
        del scaled
        U_n, w_n, k_end_t = U.view(N, R, C, V), w.view(N, R, C, K), k_end.view(N, R, C, K).mT
        across = _flushed(a * E_C).view(N, R, K, 1)  # g, scales the state's rows

        starts = scan_chunks(U_n, w_n, k_end_t, across, S0)  # U_n made in place
        final, starts = starts[N].clone(), starts[:N].view(X, K, V)
        out = (P @ U).baddbmm_(q_start, starts)
        ctx.save_for_backward(
            v, beta, E, a, q_e, k_e, k_d, q_start, k_gamma, k_end, across, kk, P, inverse, w,
            U, starts,
        )  # fmt: skip
        ctx.mark_non_differentiable(final)
        ctx.shape = (N, R, C, K, V)
        return out.view(N, R, C, V), final

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, d_out: Tensor, _d_state: Tensor
    ) -> tuple[Tensor | None, ...]:
        (
            v, beta, E, a, q_e, k_e, k_d, q_start, k_gamma, k_end, across, kk, P, inverse, w,
            U, starts,
        ) = ctx.saved_tensors  # fmt: skip
        N, R, C, K, V = ctx.shape
        X = N * R
        dO = d_out.reshape(X, C, V)

        # the reverse scan: dU_n and the state gradient dS_{n+1} reaching each chunk n;
        # dS_{n+1}'s other uses (E_C ⊙ K_d's and g's gradients) are taken as it goes
        dU = (P.mT @ dO).view(N, R, C, V)
        k_end_n, w_t = k_end.view(N, R, C, K), w.view(N, R, C, K).mT
        q_start_t, dO_n = q_start.view(N, R, C, K).mT, dO.view(N, R, C, V)
        U_n, starts_n = U.view(N, R, C, V), starts.view(N, R, K, V)
        d_k_end = dO.new_empty(N, R, C, K)  # U_n dS_{n+1}^T
        d_across = dO.new_empty(N, R, K)  # Σ_v S_n ⊙ dS_{n+1}
        dS, dS_before = dO.new_zeros(R, K, V), dO.new_empty(R, K, V)  # dS_{n+1}, dS_n
        for n in range(N - 1, -1, -1):
            torch.bmm(U_n[n], dS.mT, out=d_k_end[n])
            torch.linalg.vecdot(starts_n[n], dS, out=d_across[n])
            dU[n].baddbmm_(k_end_n[n], dS)
            if n == 0:  # dS_0 would reach only S0, which gets no gradient
                break
            torch.mul(dS, across[n], out=dS_before).baddbmm_(q_start_t[n], dO_n[n])
            dS_before.baddbmm_(w_t[n], dU[n], alpha=-1)
            dS, dS_before = dS_before, dS
        dU, d_k_end = dU.view(X, C, V), d_k_end.view(X, C, K)

        # O = (a ⊙ Q_e) S_n + P U
        dP = (dO @ U.mT).tril_()  # (X, C, C)
        d_q_start = dO @ starts.mT  # (X, C, K)
        # U = U_0 - W S_n, [U_0 | W] = (I + L)^{-1} [diag(β) V | diag(β) (a ⊙ K_e)]
        d_rhs_v = inverse.mT @ dU
        m = d_rhs_v @ starts.mT  # (X, C, K), minus the gradient of diag(β) (a ⊙ K_e)
        dL = (d_rhs_v @ U.mT).tril_(-1).neg_()
        d_beta = _row_dots(v, d_rhs_v) - _row_dots(k_gamma, m) + (dL * kk).sum(-1)
        dv = d_rhs_v.mul_(beta[..., None])
        d_kk = dL.mul_(beta[..., None])  # L = β ⊙_rows (K_e K_d^T), strictly lower
        d_k_gamma = m.mul_(beta[..., None]).neg_()
        # log a = b_1 (in a ⊙ Q_e, a ⊙ K_e, g = a E_C) and log E_C = b_C - b_1 (in E_C ⊙ K_d, g)
        g_terms = d_across.view(X, K) * across.view(X, K)
        d_log_a = _column_dots(d_q_start, q_start) + _column_dots(d_k_gamma, k_gamma) + g_terms
        d_log_E_C = _column_dots(d_k_end, k_end) + g_terms
        # the scaled copies, each with all its uses
        dQe = torch.mul(d_q_start, a).baddbmm_(dP, k_d)
        dKe = torch.mul(d_k_gamma, a).baddbmm_(d_kk, k_d)
        dKd = torch.mul(d_k_end, E[:, -1:]).baddbmm_(dP.mT, q_e).baddbmm_(d_kk.mT, k_e)
        db = (dQe * q_e).addcmul_(dKe, k_e).addcmul_(dKd, k_d, value=-1)  # to log E_i
        db[:, 0] += d_log_a - d_log_E_C - db.sum(1)  # b_1, in a and in every E_i = e^(b_i - b_1)
        db[:, -1] += d_log_E_C
        dq = dQe.mul_(E)
        dk = dKe.mul_(E).addcdiv_(dKd, E)
        d_log_alpha = _chunk_cumsum(db, reverse=True)  # b = the cumulative sums of log α
        return chunk_major_grads(ctx.shape, C, dq, dk, dv, d_beta, d_log_alpha.view(N, R, C, K))
