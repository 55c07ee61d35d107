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

from attn_lightning.attention.chunked_channel_decay import _chunk_cumsum
from attn_lightning.attention.dplr_terms import (
    ChunkTerms,
    GivenInputs,
    RWKV7Inputs,
    chunk_view,
    score_mask,
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
) -> tuple[Tensor, Tensor, Tensor]:
    """The chunked forward, a slab at a time -> O (B, H, T, V), the states entering the
    chunks and the final one (N + 1, B H, K, V), and the final state (B H, K, V)."""
    q, _, v = inputs.tensors[:3]
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
        t = ChunkTerms(*inputs.chunks(n0, n1, C))
        lowest = torch.minimum(lowest, t.g.amin())  # the strongest decay across a chunk
        # the scan S_{n+1} = M_n S_n + R_n, R = Diag(g) (K̄^T V + B̄^T U_0)
        R_n = torch.bmm(t.keys[:, :C].mT, t.v).baddbmm_(t.keys[:, C:].mT, t.U).mul_(t.g)
        R_n, M_n = R_n.view(s, R, K, V), t.M.view(s, R, K, K)
        for j in range(s):
            torch.baddbmm(R_n[j], M_n[j], states[n0 + j], out=states[n0 + j + 1])
        starts = states[n0:n1].view(X, K, V)
        U = t.U.baddbmm_(t.W, starts)  # U_n = U_0 + W S_n
        o = torch.bmm(t.scores[:, :C, :C], t.v).baddbmm_(t.scores[:, :C, C:], U)
        o.baddbmm_(t.reads[:, :C], starts)
        chunk_view(out, n0, n1, C).copy_(o.view(s, B, H, C, V))
    if not bool(lowest >= math.exp(-FACTOR_BOUND)):  # one check (a host sync on a GPU)
        raise ValueError(
            f"chunked_dplr: a chunk's log-decay is below -{FACTOR_BOUND:g} or not finite; "
            "use shorter chunks or a bounded decay"
        )
    return out, states, states[N].clone()


def _dplr_backward(
    inputs: GivenInputs | RWKV7Inputs, states: Tensor, d_out: Tensor, C: int
) -> list[Tensor]:
    """The chunked backward, a slab at a time from the last (ChunkedDPLR's docstring)."""
    q, _, v = inputs.tensors[:3]
    B, H, T, K = q.shape
    V, R, N = v.size(-1), B * H, T // C
    steps = max(1, SLAB_CHUNKS // R)
    grads = inputs.new_grads()
    dS = q.new_zeros(R, K, V)  # dS_{n+1}; the final state takes no gradient
    mask = score_mask(C, q)
    for n0 in reversed(range(0, N, steps)):
        n1 = min(N, n0 + steps)
        s, X = n1 - n0, (n1 - n0) * R
        t = ChunkTerms(*inputs.chunks(n0, n1, C))
        starts = states[n0:n1].view(X, K, V)
        values = torch.cat((t.v, t.U.baddbmm_(t.W, starts)), 1)  # [V; U], U_n = U_0 + W S_n
        dO = chunk_view(d_out, n0, n1, C).reshape(X, C, V)
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
        dv = torch.bmm(t.scores[:, :, :C].mT, d_rows).baddbmm_(k_bar, G)

        # through the decayed copies: dc (and de) from each, then d log w
        d_e = d_reads[:, C:] * a_t
        d_c = torch.mul(d_reads[:, :C], q_t).addcmul_(d_keys[:, :C], k_bar, value=-1)
        d_c.addcmul_(d_keys[:, C:], b_bar, value=-1)
        d_c[:, -1] += d_log_g
        d_c += d_e
        _chunk_cumsum(d_c, reverse=True).sub_(d_e)  # c, e: cumulative sums of log w
        dq = d_reads[:, :C].mul_(t.grow)
        da = d_reads[:, C:]  # Ã = a exp(e), e_i = c_{i-1}
        da[:, 1:].mul_(t.grow[:, :-1])
        d_keys[:, :C].mul_(t.shrink)  # [K̄; B̄] = [k; b] exp(-c)
        d_keys[:, C:].mul_(t.shrink)
        slab = [dq, d_keys[:, :C], dv, da, d_keys[:, C:], d_c]
        inputs.put_grads(n0, n1, C, [x.view(s, B, H, C, -1) for x in slab], grads)
    return grads


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
    batch of B H products.

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
        out, states, final = _dplr_forward(make_inputs(*tensors), S0, C)
        ctx.mark_non_differentiable(final)
        ctx.save_for_backward(*tensors, states)
        ctx.make_inputs, ctx.chunk_size = make_inputs, C
        return out, final

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: FunctionCtx, d_out: Tensor, _d_final: Tensor
    ) -> tuple[Tensor | None, ...]:
        *tensors, states = ctx.saved_tensors
        grads = _dplr_backward(ctx.make_inputs(*tensors), states, d_out, ctx.chunk_size)
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
