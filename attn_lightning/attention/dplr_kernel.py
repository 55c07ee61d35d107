"""The diagonal-plus-low-rank (DPLR) delta rule: the core of RWKV-7.

With the state kept as S (D_k x D_v) (o_t = S_t^T q_t; RWKV-7's S is its transpose), decays
w_t in (0, 1] per key channel and two D_k-vectors a_t (what the state is read with) and b_t
(where that reading is written back),

    S_t = (Diag(w_t) + b_t a_t^T) S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t

(fla's `dplr_recurrence` with its alpha = a, beta = b, gk = log w, and q unscaled). RWKV-7 takes
a = -κ̂ and b = κ̂ ⊙ a_icl: the delta rule's removal of the state's answer to κ̂, per channel.
Three forms that agree:

- chunked (training, prefill): inside a chunk of C positions, with c_i = Σ_{s<=i} log w_s the
  decay from the chunk's start, e_i = c_{i-1} (e_0 = 0) the one before position i, and the
  decayed copies Q̃ = Q ⊙ exp(c), Ã = A ⊙ exp(e), K̄ = K ⊙ exp(-c), B̄ = B ⊙ exp(-c), the
  readings u_i = S_{i-1}^T a_i of the state solve one unit-triangular system (the UT transform
  of the delta rule's chunked form, chunked_delta_rule.py, with a and b for -β k and k):
      (I - L) U = Ã S_0 + P V,   L = tril_(-1)(Ã B̄^T),   P = tril_(-1)(Ã K̄^T)
  so U = W S_0 + U_0 with W = (I - L)^{-1} Ã and U_0 = (I - L)^{-1} P V, and
      O = Q̃ S_0 + tril(Q̃ K̄^T) V + tril(Q̃ B̄^T) U,
      S_C = Diag(g) (S_0 + K̄^T V + B̄^T U) = M S_0 + R,   g = exp(c_C),
      M = Diag(g) (I + B̄^T W),   R = Diag(g) (K̄^T V + B̄^T U_0);
  only the scan S_{n+1} = M_n S_n + R_n (one D_k x D_k by D_k x D_v product per chunk) is
  sequential; the rest is batched over chunks. Memory is linear in T (the states entering the
  chunks, a D_k x D_v matrix per C positions), never a (T, D_k, D_v) tensor of prefix states;
- recurrent (decoding): the update above, one token at a time, O(1) per token;
- materialised: the core is linear in v, so the (T, T) matrix is the chunked form run on
  one-hot values (as decay_kernel.decay_attention_matrix does).

The factorisation multiplies by exp(-c): it needs Σ log w over a chunk to stay above
-FACTOR_BOUND (e^40 and e^-40 are far inside float32's range; every product it forms is
bounded by 1 times the vectors' sizes). RWKV-7's decay w = exp(-e^{-0.5} σ(·)) is at least
exp(-e^{-0.5}) per step by construction, so its chunks of up to 65 positions always qualify;
`chunked_dplr` checks the bound and says so otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

FACTOR_BOUND = 40.0  # the most negative log-decay a chunk may hold (see the module docstring)


class DPLRState:
    """The recurrent state of one layer: S (B, H, D_k, D_v); `length` tokens seen."""

    def __init__(self) -> None:
        self.length = 0
        self.S: Tensor | None = None


SLAB_CHUNKS = 256  # chunks whose terms are formed at once (whole steps of the scan)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)  # the triangular solve wants >= fp32


def _chunk_cumsum(x: Tensor, reverse: bool = False) -> Tensor:
    """Cumulative sum (reverse: from the end) over dim 1 of x (X, C, K), in place."""
    C = x.size(1)
    order = range(C - 2, -1, -1) if reverse else range(1, C)
    step = 1 if reverse else -1
    for i in order:
        x[:, i].add_(x[:, i + step])
    return x


def _score_mask(C: int, like: Tensor) -> Tensor:
    """(2C, 2C) mask of the scores [Q̃; Ã] [K̄; B̄]^T: the query rows see positions j <= i of
    both blocks, the reading rows (Ã) j < i (u_i reads S_{i-1})."""
    i = torch.arange(2 * C, device=like.device)[:, None]
    j = torch.arange(2 * C, device=like.device)[None, :]
    return torch.where(i < C, j % C <= i % C, j % C < i % C).to(like.dtype)


def _chunks(x: Tensor, n0: int, n1: int, C: int) -> Tensor:
    """Chunks n0..n1-1 of x (B, H, T, D) as a view (n1 - n0, B, H, C, D): step-major, the
    order the scan reads them in."""
    return x[:, :, n0 * C : n1 * C].unflatten(2, (n1 - n0, C)).permute(2, 0, 1, 3, 4)


class _ChunkTerms:
    """The terms of a slab of s steps' chunks (the views of `_chunks`), each (X, ·, ·) with
    X = s B H chunks, step-major: grow = exp(c) and shrink = exp(-c) (X, C, K), reads = [Q̃; Ã]
    and keys = [K̄; B̄] (X, 2C, K), the masked scores reads keys^T (X, 2C, 2C), (I - L)^{-1}
    (X, C, C), W (X, C, K), v and U = U_0 (X, C, V) (made U_n in place by the caller),
    g (X, K, 1) and M (X, K, K)."""

    def __init__(self, q: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, log_w: Tensor):
        s, B, H, C, K = q.shape  # chunk views (_chunks)
        X = s * B * H
        c = log_w.clone(memory_format=torch.contiguous_format).view(X, C, K)
        _chunk_cumsum(c)  # log-decay from the chunk start, position i included
        self.grow = c.exp()
        self.shrink = c.neg_().exp_()
        self.reads = q.new_empty(X, 2 * C, K)
        self.keys = q.new_empty(X, 2 * C, K)
        reads, keys = self.reads.view(s, B, H, 2 * C, K), self.keys.view(s, B, H, 2 * C, K)
        grow, shrink = self.grow.view(s, B, H, C, K), self.shrink.view(s, B, H, C, K)
        torch.mul(q, grow, out=reads[..., :C, :])  # Q̃ = q exp(c)
        reads[..., C, :].copy_(a[..., 0, :])  # Ã = a exp(e), e_i = c_{i-1}, e_0 = 0
        torch.mul(a[..., 1:, :], grow[..., :-1, :], out=reads[..., C + 1 :, :])
        torch.mul(k, shrink, out=keys[..., :C, :])  # K̄ = k exp(-c)
        torch.mul(b, shrink, out=keys[..., C:, :])  # B̄ = b exp(-c)
        self.scores = torch.bmm(self.reads, self.keys.mT).mul_(_score_mask(C, q))
        eye = torch.eye(C, dtype=q.dtype, device=q.device)
        self.inverse = torch.linalg.solve_triangular(  # (I - L)^{-1}, L = the strict Ã B̄^T
            self.scores[:, C:, C:].neg(), eye, upper=False, unitriangular=True
        )
        self.W = torch.bmm(self.inverse, self.reads[:, C:])
        self.v = v.reshape(X, C, v.size(-1))
        self.U = self.inverse @ (self.scores[:, C:, :C] @ self.v)  # U_0 = (I - L)^{-1} P V
        self.g = self.grow[:, -1, :, None]  # (X, K, 1) the decay across the chunk
        # M = Diag(g) (I + B̄^T W): the state's transition across the chunk (X, K, K)
        self.M = torch.bmm(self.keys[:, C:].mT, self.W)
        self.M.diagonal(dim1=1, dim2=2).add_(1.0)
        self.M.mul_(self.g)


class ChunkedDPLR(torch.autograd.Function):
    """q, k, a, b, log w (B, H, T, K), v (B, H, T, V) with T a multiple of the chunk size C,
    in any layout, and the entering state S0 (B H, K, V) or None -> O (B, H, T, V) and the
    final state (not differentiable). The forward is the module docstring's; the backward, for
    dO (the carried states get no gradient), with after_n = dS_{n+1} and G_n = Diag(g) after_n:

        dS_n = M_n^T dS_{n+1} + Q̃^T dO_n + W^T tril(Q̃ B̄^T)^T dO_n      (the reverse scan)
        dU = tril(Q̃ B̄^T)^T dO + B̄ G,   D = (I - L)^{-T} dU
        [dÃ | d(P V)] = [D S_n^T | D]   ([W | U_0] = (I - L)^{-1} [Ã | P V]), and dL = D U^T
                                        (U = U_0 + W S_n makes its two terms one)
        d[scores] = [dO; D] [V; U]^T, masked as the scores, then
        d[Q̃; Ã] = d[scores] [K̄; B̄] + [dO; D] S_n^T,   d[K̄; B̄] = d[scores]^T [Q̃; Ã] + [V; U] G^T
        dV = [tril(Q̃ K̄^T); P]^T [dO; D] + K̄ G,   d log g = Σ_v after ⊙ S_{n+1}

    then through the exponentials of the decayed copies to q, k, a, b and the cumulative
    log-decays c and e, summed from the chunk's end into d log w.

    Chunks are taken a slab at a time (SLAB_CHUNKS, whole steps of the scan, all rows): a
    slab's terms are formed, scanned and used while they are small enough to stay in cache,
    and the backward forms them again rather than keeping them; only the states entering the
    chunks, (N + 1, B H, K, V), are kept. Full-size temporaries would each cost a fresh
    allocation whose pages fault in and a trip through memory (chunked_linear.py, where the
    same was measured). The step-major order makes each step of the scan one contiguous
    batch of B H products."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        a: Tensor,
        b: Tensor,
        log_w: Tensor,
        S0: Tensor | None,
        C: int,
    ) -> tuple[Tensor, Tensor]:
        B, H, T, K = q.shape
        V, R, N = v.size(-1), B * H, T // C
        steps = max(1, SLAB_CHUNKS // R)  # of the scan per slab
        out = q.new_empty(B, H, T, V)
        states = q.new_empty(N + 1, R, K, V)  # S_n entering each chunk, and the final state
        if S0 is None:
            states[0].zero_()
        else:
            states[0].copy_(S0)
        lowest = q.new_ones(())
        for n0 in range(0, N, steps):
            n1 = min(N, n0 + steps)
            s, X = n1 - n0, (n1 - n0) * R
            t = _ChunkTerms(*(_chunks(x, n0, n1, C) for x in (q, k, v, a, b, log_w)))
            lowest = torch.minimum(lowest, t.g.amin())  # the strongest decay across a chunk
            # the scan S_{n+1} = M_n S_n + R_n, R = Diag(g) (K̄^T V + B̄^T U_0)
            R_n = torch.bmm(t.keys[:, :C].mT, t.v).baddbmm_(t.keys[:, C:].mT, t.U).mul_(t.g)
            R_n, M_n = R_n.view(s, R, K, V), t.M.view(s, R, K, K)
            for j in range(s):
                torch.baddbmm(R_n[j], M_n[j], states[n0 + j], out=states[n0 + j + 1])
            starts = states[n0:n1].view(X, K, V)
            values = torch.cat((t.v, t.U.baddbmm_(t.W, starts)), 1)  # [V; U], U_n = U_0 + W S_n
            o = torch.bmm(t.scores[:, :C], values).baddbmm_(t.reads[:, :C], starts)
            _chunks(out, n0, n1, C).copy_(o.view(s, B, H, C, V))
        if not bool(lowest >= math.exp(-FACTOR_BOUND)):  # one check (a host sync on a GPU)
            raise ValueError(
                f"chunked_dplr: a chunk's log-decay is below -{FACTOR_BOUND:g} or not finite; "
                "use shorter chunks or a bounded decay"
            )
        final = states[N].clone()
        ctx.save_for_backward(q, k, v, a, b, log_w, states)
        ctx.chunk_size = C
        ctx.mark_non_differentiable(final)
        return out, final

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, d_out: Tensor, _d_final: Tensor
    ) -> tuple[Tensor | None, ...]:
        q, k, v, a, b, log_w, states = ctx.saved_tensors
        C = ctx.chunk_size
        B, H, T, K = q.shape
        V, R, N = v.size(-1), B * H, T // C
        steps = max(1, SLAB_CHUNKS // R)
        grads = [q.new_empty(B, H, T, x.size(-1)) for x in (q, k, v, a, b, log_w)]
        dq, dk, dv, da, db, d_log_w = grads
        dS = q.new_zeros(R, K, V)  # dS_{n+1}; the final state takes no gradient
        mask = _score_mask(C, q)
        for n0 in reversed(range(0, N, steps)):
            n1 = min(N, n0 + steps)
            s, X = n1 - n0, (n1 - n0) * R
            t = _ChunkTerms(*(_chunks(x, n0, n1, C) for x in (q, k, v, a, b, log_w)))
            starts = states[n0:n1].view(X, K, V)
            values = torch.cat((t.v, t.U.baddbmm_(t.W, starts)), 1)  # [V; U], U_n = U_0 + W S_n
            dO = _chunks(d_out, n0, n1, C).reshape(X, C, V)
            q_t, a_t, k_bar, b_bar = (t.reads[:, :C], t.reads[:, C:], t.keys[:, :C], t.keys[:, C:])

            # the reverse scan dS_n = M_n^T dS_{n+1} + Q̃^T dO_n + W^T tril(Q̃ B̄^T)^T dO_n;
            # after = dS_{n+1}, G = Diag(g) dS_{n+1}, dU = tril(Q̃ B̄^T)^T dO + B̄ G
            dU = torch.bmm(t.scores[:, :C, C:].mT, dO)  # (X, C, V)
            read = torch.bmm(q_t.mT, dO).baddbmm_(t.W.mT, dU).view(s, R, K, V)
            after = q.new_empty(s, R, K, V)
            after[-1].copy_(dS)
            M_t = t.M.view(s, R, K, K).mT
            for j in range(s - 1, 0, -1):
                torch.baddbmm(read[j], M_t[j], after[j], out=after[j - 1])
            dS = torch.baddbmm(read[0], M_t[0], after[0])  # for the slab before
            after = after.view(X, K, V)
            G = after * t.g
            dU.baddbmm_(b_bar, G)
            d_log_g = after.mul_(states[n0 + 1 : n1 + 1].view(X, K, V)).sum(-1)  # (X, K)

            d_rows = torch.cat((dO, torch.bmm(t.inverse.mT, dU)), 1)  # [dO; D], D = (I - L)^{-T} dU
            d_scores = torch.bmm(d_rows, values.mT).mul_(mask)
            d_reads = torch.bmm(d_rows, starts.mT).baddbmm_(d_scores, t.keys)  # d[Q̃; Ã]
            d_keys = torch.bmm(values, G.mT).baddbmm_(d_scores.mT, t.reads)  # d[K̄; B̄]
            dv_slab = torch.bmm(t.scores[:, :, :C].mT, d_rows).baddbmm_(k_bar, G)

            # through the decayed copies: dc (and de) from each, then d log w
            d_e = d_reads[:, C:] * a_t
            d_c = torch.mul(d_reads[:, :C], q_t).addcmul_(d_keys[:, :C], k_bar, value=-1)
            d_c.addcmul_(d_keys[:, C:], b_bar, value=-1)
            d_c[:, -1] += d_log_g
            d_c += d_e
            _chunk_cumsum(d_c, reverse=True).sub_(d_e)  # c, e: cumulative sums of log w

            grow, shrink = t.grow.view(s, B, H, C, K), t.shrink.view(s, B, H, C, K)
            d_reads5 = d_reads.view(s, B, H, 2 * C, K)
            d_keys5 = d_keys.view(s, B, H, 2 * C, K)
            torch.mul(d_reads5[..., :C, :], grow, out=_chunks(dq, n0, n1, C))
            da_chunks = _chunks(da, n0, n1, C)
            da_chunks[..., 0, :].copy_(d_reads5[..., C, :])
            torch.mul(d_reads5[..., C + 1 :, :], grow[..., :-1, :], out=da_chunks[..., 1:, :])
            torch.mul(d_keys5[..., :C, :], shrink, out=_chunks(dk, n0, n1, C))
            torch.mul(d_keys5[..., C:, :], shrink, out=_chunks(db, n0, n1, C))
            _chunks(dv, n0, n1, C).copy_(dv_slab.view(s, B, H, C, V))
            _chunks(d_log_w, n0, n1, C).copy_(d_c.view(s, B, H, C, K))
        return (*grads, None, None)


def chunked_dplr(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    log_w: Tensor,
    chunk_size: int,
    state: DPLRState | None = None,
) -> Tensor:
    """q, k, a, b, log w (B, H, T, D_k), v (B, H, T, D_v) -> o (B, H, T, D_v).

    Continues from `state` and advances it when one is given (the carried state gets no
    gradient)."""
    dtype = v.dtype
    q, k, v, a, b, log_w = (x.to(_compute_dtype(v)) for x in (q, k, v, a, b, log_w))
    B, H, T, K = k.shape
    V = v.size(-1)
    C = min(chunk_size, T)
    pad = (-T) % C  # padded positions: q = k = v = a = b = 0, w = 1; they change nothing
    if pad:
        q, k, v, a, b, log_w = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v, a, b, log_w))
    S0 = None if state is None or state.S is None else state.S.to(q.dtype).reshape(B * H, K, V)
    if S0 is not None and S0.requires_grad:
        raise ValueError("chunked_dplr: the carried state gets no gradient; detach it")
    out, S = ChunkedDPLR.apply(q, k, v, a, b, log_w, S0, C)
    if state is not None:
        state.S = S.view(B, H, K, V)
        state.length += T
    return out[:, :, :T].to(dtype)


def recurrent_dplr(
    q: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, log_w: Tensor, state: DPLRState
) -> Tensor:
    """The RNN form, one token at a time: q, k, a, b, log w (B, H, T, D_k), v (B, H, T, D_v)."""
    dtype = v.dtype
    q, k, v, a, b, log_w = (x.to(_compute_dtype(v)) for x in (q, k, v, a, b, log_w))
    B, H, T, K = k.shape
    S = q.new_zeros(B, H, K, v.size(-1)) if state.S is None else state.S.to(q.dtype)
    outputs = []
    for t in range(T):
        read = a[:, :, t, None, :] @ S  # (B, H, 1, D_v) a_t^T S_{t-1}
        S = log_w[:, :, t, :, None].exp() * S + b[:, :, t, :, None] * read  # (B, H, D_k, D_v)
        S = S + k[:, :, t, :, None] * v[:, :, t, None, :]
        outputs.append((q[:, :, t, None, :] @ S).squeeze(-2))  # (B, H, D_v)
    state.S = S
    state.length += T
    return torch.stack(outputs, dim=2).to(dtype)


def dplr_matrix(q: Tensor, k: Tensor, a: Tensor, b: Tensor, log_w: Tensor, chunk_size: int):
    """The (B, H, T, T) matrix A with o = A v: the chunked form run on one-hot values."""
    B, H, T, _ = q.shape
    one_hot = torch.eye(T, dtype=q.dtype, device=q.device).expand(B, H, T, T)
    return chunked_dplr(q, k, one_hot, a, b, log_w, chunk_size)
