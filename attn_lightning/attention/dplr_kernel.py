"""The diagonal-plus-low-rank (DPLR) delta rule: the core of RWKV-7.

With the state kept as S (D_k x D_v) (o_t = S_t^T q_t; RWKV-7's S is its transpose), decays
w_t in (0, 1] per key channel and two D_k-vectors a_t (what the state is read with) and b_t
(where that reading is written back),

    S_t = (Diag(w_t) + b_t a_t^T) S_{t-1} + k_t v_t^T,   o_t = S_t^T q_t

(fla's `dplr_recurrence` with its alpha = a, beta = b, gk = log w, and q unscaled). RWKV-7 takes
a = -κ̂ and b = κ̂ ⊙ a_icl: the delta rule's removal of the state's answer to κ̂, per channel.
Three forms that agree:

- chunked (training, prefill): inside a chunk of C positions, with c_i = Σ_{s<=i} log w_s the
  decay from the chunk's start, e_i = c_{i-1} (e_0 = 0) the one before position i, ā = -a
  (RWKV-7's κ̂: every sign below is then a plus) and the decayed copies Q̃ = Q ⊙ exp(c),
  Ā = ā ⊙ exp(e), K̄ = K ⊙ exp(-c), B̄ = B ⊙ exp(-c), the readings u_i = S_{i-1}^T a_i of the
  state solve one unit-triangular system (the UT transform of the delta rule's chunked form,
  chunked_delta_rule.py, with a and b for -β k and k):
      (I + tril_(-1)(Ā B̄^T)) U = -(Ā S_0 + tril_(-1)(Ā K̄^T) V)
  so U = W S_0 + U_0 with T̂ = -(I + tril_(-1)(Ā B̄^T))^{-1}, W = T̂ Ā and
  U_0 = T̂ tril_(-1)(Ā K̄^T) V, and
      O = Q̃ S_0 + tril(Q̃ K̄^T) V + tril(Q̃ B̄^T) U,
      S_C = Diag(g) (S_0 + K̄^T V + B̄^T U),   g = exp(c_C).
  The four C x C blocks are one product, [Q̃; Ā] [K̄; B̄]^T, masked. Only the scan across
  chunks, U_n = U_0 + W S_n and S_{n+1} = Diag(g) (S_n + K̄^T V + B̄^T U_n) (two chunk-sized
  products per chunk), is sequential; the rest is batched over chunks. Memory is linear in T
  (per chunk the state entering it, T̂ and U), never a (T, D_k, D_v) tensor of prefix states;
- recurrent (decoding): the update above, one token at a time, O(1) per token;
- materialised: the core is linear in v, so the (T, T) matrix is the chunked form run on
  one-hot values (as decay_kernel.decay_attention_matrix does).

`chunked_rwkv7` runs the chunked form on RWKV-7's own inputs (r, k, v, the gate logits, ξ and
α) and forms k̃, a, b and log w from them a slab of chunks at a time, backward included
(dplr_terms.py): as full-size tensors, each of them and of their gradients would cost a pass
over memory, together more than the core's own work.

The factorisation multiplies by exp(-c): it needs Σ log w over a chunk to stay above
-FACTOR_BOUND (e^40 and e^-40 are far inside float32's range, and the decays the scores
hold, exp(c_i - c_j) for j <= i, are at most 1). RWKV-7's decay w = exp(-e^{-0.5} σ(·)) is at least
exp(-e^{-0.5}) per step by construction, so its chunks of up to 65 positions always qualify;
`chunked_dplr` checks the bound and says so otherwise.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx

from attn_lightning.attention.dplr_terms import (
    ChunkConstants,
    ChunkTerms,
    GivenInputs,
    RWKV7Inputs,
    chunk_view,
)

FACTOR_BOUND = 40.0  # the most negative log-decay a chunk may hold (see the module docstring)


class DPLRState:
    """The recurrent state of one layer: S (B, H, D_k, D_v); `length` tokens seen."""

    def __init__(self) -> None:
        self.length = 0
        self.S: Tensor | None = None


SLAB_CHUNKS = 256  # chunks whose terms are formed at once (whole steps of the scan)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)  # the triangular solve wants >= fp32


def _dplr_forward(
    inputs: GivenInputs | RWKV7Inputs, S0: Tensor | None, C: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The chunked forward, a slab at a time -> O (B, H, T, V), the states entering the
    chunks and the final one (N + 1, B H, K, V), the chunks' T̂ (N, B H, C, C) and readings
    U (N, B H, C, V), and the final state (B H, K, V)."""
    q, _, v = inputs.tensors[:3]
    B, H, T, K = q.shape
    V, R, N = v.size(-1), B * H, T // C
    steps = max(1, SLAB_CHUNKS // R)  # of the scan per slab
    out = q.new_empty(B, H, T, V)
    states = q.new_empty(N + 1, R, K, V)  # S_n entering each chunk, and the final state
    inverses = q.new_empty(N, R, C, C)
    readings = q.new_empty(N, R, C, V)
    if S0 is None:
        states[0].zero_()
    else:
        states[0].copy_(S0)
    shared = ChunkConstants(C, inputs.scale, q)
    lowest = q.new_ones(())
    for n0 in range(0, N, steps):
        n1 = min(N, n0 + steps)
        s, X = n1 - n0, (n1 - n0) * R
        t = ChunkTerms(inputs.chunks(n0, n1, C), shared)
        U_n = t.solve(inverses[n0:n1].view(X, C, C), readings[n0:n1].view(X, C, V))  # U_0
        lowest = torch.minimum(lowest, t.g.amin())  # the strongest decay across a chunk
        # the scan: U_n = U_0 + W S_n, S_{n+1} = Diag(g) (S_n + K̄^T V + B̄^T U_n)
        written = torch.bmm(t.keys[:, :C].mT, t.v).view(s, R, K, V)  # K̄^T V
        W, U = t.W.view(s, R, C, K), U_n.view(s, R, C, V)
        b_bar, g = t.keys[:, C:].unflatten(0, (s, R)), t.g.view(s, R, K, 1)
        for j in range(s):
            S, after = states[n0 + j], states[n0 + j + 1]
            U[j].baddbmm_(W[j], S)
            torch.add(S, written[j], out=after).baddbmm_(b_bar[j].mT, U[j]).mul_(g[j])
        t.values[:, C:].copy_(U_n)
        o = torch.bmm(t.scores[:, :C], t.values)
        o.baddbmm_(t.reads[:, :C], states[n0:n1].view(X, K, V))
        chunk_view(out, n0, n1, C).copy_(o.view(s, B, H, C, V))
    if not bool(lowest >= math.exp(-FACTOR_BOUND)):  # one check (a host sync on a GPU)
        raise ValueError(
            f"chunked_dplr: a chunk's log-decay is below -{FACTOR_BOUND:g} or not finite; "
            "use shorter chunks or a bounded decay"
        )
    return out, states, inverses, readings, states[N].clone()


def _dplr_backward(
    inputs: GivenInputs | RWKV7Inputs,
    states: Tensor,
    inverses: Tensor,
    readings: Tensor,
    d_out: Tensor,
    C: int,
) -> list[Tensor]:
    """The chunked backward, a slab at a time from the last (ChunkedDPLR's docstring)."""
    q, _, v = inputs.tensors[:3]
    B, H, T, K = q.shape
    V, R, N = v.size(-1), B * H, T // C
    steps = max(1, SLAB_CHUNKS // R)
    grads = inputs.new_grads(min(steps, N), C)
    dS = q.new_zeros(R, K, V)  # dS_{n+1}; the final state takes no gradient
    shared = ChunkConstants(C, inputs.scale, q)
    for n0 in reversed(range(0, N, steps)):
        n1 = min(N, n0 + steps)
        s, X = n1 - n0, (n1 - n0) * R
        t = ChunkTerms(inputs.chunks(n0, n1, C), shared)
        t.use(inverses[n0:n1].view(X, C, C))
        starts = states[n0:n1].view(X, K, V)
        t.values[:, C:].copy_(readings[n0:n1].view(X, C, V))  # [V; U]
        d_rows = q.new_empty(X, 2 * C, V)  # [dO; D]
        dO = d_rows[:, :C]
        dO.view(s, B, H, C, V).copy_(chunk_view(d_out, n0, n1, C))
        q_t, k_bar, b_bar = t.reads[:, :C], t.keys[:, :C], t.keys[:, C:]

        # the reverse scan, with after = dS_{n+1} and G = Diag(g) dS_{n+1}:
        # dU = tril(Q̃ B̄^T)^T dO + B̄ G,  dS_n = Q̃^T dO + G + W^T dU
        dU = torch.bmm(t.scores[:, :C, C:].mT, dO)  # (X, C, V)
        read = torch.bmm(q_t.mT, dO).view(s, R, K, V)
        after, G = q.new_empty(s, R, K, V), q.new_empty(s, R, K, V)
        after[-1].copy_(dS)
        W, dU_steps = t.W.view(s, R, C, K), dU.view(s, R, C, V)
        b_steps, g = b_bar.unflatten(0, (s, R)), t.g.view(s, R, K, 1)
        for j in range(s - 1, -1, -1):
            torch.mul(after[j], g[j], out=G[j])
            dU_steps[j].baddbmm_(b_steps[j], G[j])
            dS = torch.add(read[j], G[j], out=after[j - 1] if j else None)
            dS.baddbmm_(W[j].mT, dU_steps[j])
        after, G = after.view(X, K, V), G.view(X, K, V)
        d_log_g = after.mul_(states[n0 + 1 : n1 + 1].view(X, K, V)).sum(-1)  # (X, K)

        d_rows[:, C:].copy_(torch.bmm(t.inverse.mT, dU))  # D = T̂^T dU
        d_scores = torch.bmm(d_rows, t.values.mT).mul_(shared.mask)
        d_reads = torch.bmm(d_rows, starts.mT).baddbmm_(d_scores, t.keys)  # d[Q̃; Ā]
        d_keys = torch.bmm(t.values, G.mT).baddbmm_(d_scores.mT, t.reads)  # d[K̄; B̄]
        dv = torch.bmm(t.scores[:, :, :C].mT, d_rows).baddbmm_(k_bar, G)
        chunk_view(grads[2], n0, n1, C).copy_(dv.view(s, B, H, C, V))

        # through the decayed copies: [dc; de] from each, d decay = reverse · [dc; de]
        d_ce = d_reads * t.reads
        d_ce[:, :C].addcmul_(d_keys[:, :C], k_bar, value=-1)
        d_ce[:, :C].addcmul_(d_keys[:, C:], b_bar, value=-1)
        d_ce[:, C - 1] += d_log_g
        d_decay = torch.bmm(shared.reverse.expand(X, C, 2 * C), d_ce)
        dq = d_reads[:, :C].view(s, B, H, C, K)
        torch.mul(dq, t.grow.view(s, B, H, C, K), out=chunk_view(grads[0], n0, n1, C))
        da = d_reads[:, C:]  # Ā = ā exp(e), e_i = c_{i-1}
        da[:, 1:].mul_(t.grow[:, :-1])
        d_keys.view(X, 2, C, K).mul_(t.shrink[:, None])  # [K̄; B̄] = [k; b] exp(-c)
        slab = [d_keys[:, :C], da, d_keys[:, C:], d_decay]
        inputs.put_grads(n0, n1, C, [x.view(s, B, H, C, -1) for x in slab], grads)
    return inputs.finish_grads(grads)


class ChunkedDPLR(torch.autograd.Function):
    """q, k, a, b, log w (B, H, T, K), v (B, H, T, V) with T a multiple of the chunk size C,
    in any layout, and the entering state S0 (B H, K, V) or None -> O (B, H, T, V) and the
    final state (not differentiable). The forward is the module docstring's; the backward, for
    dO (the carried states get no gradient), with after_n = dS_{n+1} and G_n = Diag(g) after_n:

        dU = tril(Q̃ B̄^T)^T dO + B̄ G,   dS_n = Q̃^T dO + G + W^T dU       (the reverse scan)
        D = T̂^T dU                  (dU back through U = T̂ (Ā S_n + tril_(-1)(Ā K̄^T) V))
        d[scores] = [dO; D] [V; U]^T, masked as the scores, then
        d[Q̃; Ā] = d[scores] [K̄; B̄] + [dO; D] S_n^T,   d[K̄; B̄] = d[scores]^T [Q̃; Ā] + [V; U] G^T
        dV = [tril(Q̃ K̄^T); tril_(-1)(Ā K̄^T)]^T [dO; D] + K̄ G,   d log g = Σ_v after ⊙ S_{n+1}

    then through the exponentials of the decayed copies to q, k, ā, b, and to the cumulative
    log-decays: [dc; de] = [dQ̃ ⊙ Q̃ - dK̄ ⊙ K̄ - dB̄ ⊙ B̄; dĀ ⊙ Ā] (d log g joins dc at the
    chunk's end), d log w_m = Σ_{j>=m} dc_j + Σ_{j>m} de_j.

    Chunks are taken a slab at a time (SLAB_CHUNKS, whole steps of the scan, all rows): a
    slab's terms are formed, scanned and used while they are small enough to stay in cache,
    and the backward forms them again rather than keeping them. Kept: the states entering the
    chunks (N + 1, B H, K, V), and per chunk T̂ (C, C) and U (C, V), whose forming again would
    cost a triangular solve and three products for a chunk's worth of memory. Full-size
    temporaries would each cost a fresh allocation whose pages fault in and a trip through
    memory (chunked_linear.py, where the same was measured). The step-major order makes each
    step of the scan one contiguous batch of B H products.

    The inputs come as `tensors` with `make_inputs`, which wraps them: GivenInputs for the
    core's own (q, k, v, a, b, log w), or RWKV7Inputs for RWKV-7's (r, k, v, z, ξ, α), whose
    core inputs are formed slab by slab in the forward and again in the backward, which takes
    their gradients back to these."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        make_inputs: Callable[..., GivenInputs | RWKV7Inputs],
        S0: Tensor | None,
        C: int,
        *tensors: Tensor,
    ) -> tuple[Tensor, Tensor]:
        out, states, inverses, readings, final = _dplr_forward(make_inputs(*tensors), S0, C)
        ctx.mark_non_differentiable(final)
        ctx.save_for_backward(*tensors, states, inverses, readings)
        ctx.make_inputs, ctx.chunk_size = make_inputs, C
        return out, final

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: FunctionCtx, d_out: Tensor, _d_final: Tensor
    ) -> tuple[Tensor | None, ...]:
        *tensors, states, inverses, readings = ctx.saved_tensors
        inputs = ctx.make_inputs(*tensors)
        grads = _dplr_backward(inputs, states, inverses, readings, d_out, ctx.chunk_size)
        return (None, None, None, *grads)


def _carried(state: DPLRState | None, like: Tensor, rows: int) -> Tensor | None:
    """The state a call continues from, (B H, K, V) in like's dtype, or None."""
    if state is None or state.S is None:
        return None
    S0 = state.S.to(like.dtype).reshape(rows, state.S.size(-2), state.S.size(-1))
    if S0.requires_grad:
        raise ValueError("chunked_dplr: the carried state gets no gradient; detach it")
    return S0


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
    B, H, T, _ = k.shape
    C = min(chunk_size, T)
    pad = (-T) % C  # padded positions: q = k = v = a = b = 0, w = 1; they change nothing
    if pad:
        q, k, v, a, b, log_w = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v, a, b, log_w))
    S0 = _carried(state, q, B * H)
    out, S = ChunkedDPLR.apply(GivenInputs, S0, C, q, k, v, a, b, log_w)
    if state is not None:
        state.S = S.view(B, H, *S.shape[1:])
        state.length += T
    return out[:, :, :T].to(dtype)


def chunked_rwkv7(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    z: Tensor,
    xi: Tensor,
    alpha: Tensor,
    chunk_size: int,
    eps: float,
    decay_scale: float,
    state: DPLRState | None = None,
) -> Tensor:
    """RWKV-7's time mixing on the chunked core, its inputs formed inside (RWKV7Inputs): r, k,
    v (B, H, T, D), gate logits z = [z_w | z_a] (B, H, T, 2 D), ξ, α (H, D) -> o (B, H, T, D).
    The same as chunked_dplr on the inputs it forms; continues from `state` when given."""
    dtype = v.dtype
    r, k, v, z, xi, alpha = (x.to(_compute_dtype(v)) for x in (r, k, v, z, xi, alpha))
    B, H, T, _ = k.shape
    C = min(chunk_size, T)
    pad = (-T) % C  # padded positions: r = k = v = 0 and z = -inf, so w = 1, κ̂ = k̃ = 0
    if pad:
        r, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (r, k, v))
        z = F.pad(z, (0, 0, 0, pad), value=float("-inf"))
    S0 = _carried(state, r, B * H)
    make_inputs = functools.partial(RWKV7Inputs, eps=eps, decay_scale=decay_scale)
    out, S = ChunkedDPLR.apply(make_inputs, S0, C, r, k, v, z, xi, alpha)
    if state is not None:
        state.S = S.view(B, H, *S.shape[1:])
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
