"""Causal linear attention with decay: the base of retention and GLA.

With per-token decays α_t in (0, 1] (a scalar per head, or one per key channel) the state
and output are

    S_t = diag(α_t) S_{t-1} + k_t^T v_t,   o_t = q_t S_t,
    i.e.  o_i = Σ_{j<=i} ((q_i ⊙ Π_{j<s<=i} α_s) · k_j) v_j

computed three ways that agree:
- chunked (training, prefill): inside a chunk of C positions a masked C x C product whose
  decays exp(b_i - b_j) come from b = cumulative log α within the chunk (every exponent <= 0:
  nothing is divided by a tiny cumulative product), across chunks a running (K x V) state;
  never a (T, K, V) tensor of prefix states;
- recurrent (decoding): one update of S per token, O(1) in the sequence length;
- materialised: the (T, T) matrix A_ij = Σ_d q_id k_jd Π_{j<s<=i} α_sd, read by running the
  chunked form on one-hot values (the core is linear in v).

Decays arrive as log α (B, H, T, 1) or (B, H, T, K). While the decay within every chunk stays
above e^-40, either kind (a scalar one expanded to the K channels) is factorised into two
decayed copies of q and k (one matmul; chunked_channel_decay.py, one autograd Function with
its own backward). Past that bound a scalar decay keeps the C x C decay matrix apart from
q k^T, and a per-channel one needs a (C, C, K) tensor inside each chunk (GLA uses chunks of 32).

`DecayAttention` runs them as an attention core with fla's conventions (q scaled by K^-1/2) and
normalises each head's output (RMSNorm, as GLA and fla's RetNet layer do; RetNet's GroupNorm
is the same up to centring) before the base's output projection: the state sums up to
1 / (1 - α) tokens, so without it the output's scale differs by head (2^5 to 2^(4+H) tokens for
retention) and drifts with the learnt gates, which the published layers avoid by normalising
(the per-head gain adds D parameters). The norm sits in the output projection
(`HeadNormProjection`), after the matrix, so `return_attn`'s matrix @ v and the fast path pass
through the same norm (and the matrix shown is the core's, before it).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attn_lightning.attention.base import CausalSelfAttention
from attn_lightning.attention.chunked_channel_decay import ChunkedChannelDecay
from attn_lightning.attention.chunked_linear import chunk_rows
from attn_lightning.errors import ConfigError


class DecayState:
    """The recurrent state of one layer: S (B, H, K, V)."""

    def __init__(self) -> None:
        self.length = 0
        self.S: Tensor | None = None


def _decay_matrix(b: Tensor) -> Tensor:
    """Cumulative log α b (B, H, N, C, G) -> exp(b_i - b_j) for j <= i, 0 above the diagonal:
    (B, H, N, C, C) for a scalar decay (G = 1), else (B, H, N, C, C, G). The masked exponents
    are positive and could overflow: they are replaced by -inf before exp."""
    C = b.size(-2)
    causal = torch.ones(C, C, dtype=torch.bool, device=b.device).tril()[:, :, None]
    diff = b[..., :, None, :] - b[..., None, :, :]  # (B, H, N, C, C, G) <= 0 where causal
    decay = diff.masked_fill(~causal, float("-inf")).exp()
    return decay.squeeze(-1) if b.size(-1) == 1 else decay


FACTOR_BOUND = 40.0  # log-decay within a chunk up to which the factorised form is used


def _per_channel_terms(qc: Tensor, kc: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A per-channel decay's three chunk terms, exactly, for decays stronger than
    e^-FACTOR_BOUND within a chunk (the factorised case is chunked_channel_decay.py), from
    q, k (B, H, N, C, K) and cumulative log α b (B, H, N, C, K): the within-chunk scores
    Σ_d q_id k_jd exp(b_id - b_jd) for j <= i (else 0) (B, H, N, C, C), the queries decayed
    from the chunk's start q ⊙ exp(b) and the keys decayed to its end k ⊙ exp(b_C - b)
    (B, H, N, C, K). Its (B, H, N, C, C, K) tensor, K times the scores, is why this form is
    only the fallback."""
    last = b[..., -1:, :]  # (B, H, N, 1, K)
    decayed_k = _decay_matrix(b) * kc[..., None, :, :]  # (B, H, N, C, C, K) k_j ⊙ α_{j->i}
    within = (decayed_k @ qc[..., :, :, None]).squeeze(-1)  # (B, H, N, C, C)
    return within, qc * b.exp(), kc * (last - b).exp()


def _channel_decay_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    C: int,
    state: DecayState | None,
    scale: float,
) -> Tensor | None:
    """The per-channel case as one autograd Function (chunked_channel_decay.py), or None where
    a chunk's decay after its first position falls below e^-FACTOR_BOUND (log α <= 0, so a
    chunk's sum is its smallest cumulative decay; one reduction, a host sync on a GPU)."""
    B, H, T, K = q.shape
    log_alpha = chunk_rows(log_decay, C)  # (X, C, K), padded with no decay
    if not bool(log_alpha[:, 1:].sum(1).amin() >= -FACTOR_BOUND):
        return None
    S0 = None if state is None or state.S is None else state.S.reshape(B * H, K, -1)
    out, S = ChunkedChannelDecay.apply(
        chunk_rows(q, C), chunk_rows(k, C), chunk_rows(v, C), log_alpha, S0, B * H, scale
    )
    if state is not None:
        state.S = S.view(B, H, K, -1)
        state.length += T
    return out.view(B, H, -1, v.size(-1))[:, :, :T]


def chunked_decay_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    chunk_size: int,
    state: DecayState | None,
    scale: float = 1.0,
) -> Tensor:
    """q, k (B, H, T, K), v (B, H, T, V), log α (B, H, T, 1 or K) <= 0 -> o (B, H, T, V) of
    the queries scaled by `scale`.

    Continues from `state` and advances it when one is given."""
    B, H, T, K = q.shape
    V, G = v.size(-1), log_decay.size(-1)
    C = min(chunk_size, T)
    # a scalar decay runs as one per channel too: its Function (chunked_channel_decay.py),
    # with its own backward, beats autograd on the scalar form below
    out = _channel_decay_attention(q, k, v, log_decay.expand(B, H, T, K), C, state, scale)
    if out is not None:
        return out
    if scale != 1.0:
        q = q * scale
    pad = (-T) % C  # padded positions: zero q, k, v and no decay, so they change nothing
    q, k, v, log_decay = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v, log_decay))
    N = (T + pad) // C
    qc, kc, vc = q.view(B, H, N, C, K), k.view(B, H, N, C, K), v.view(B, H, N, C, V)
    b = log_decay.view(B, H, N, C, G).cumsum(3)  # (B, H, N, C, G) log Π α from the chunk start

    last = b[:, :, :, -1:]  # (B, H, N, 1, G) log-decay across the whole chunk
    if G == 1:  # scalar decay: (q k^T) ⊙ exp(b_i - b_j)
        within = (qc @ kc.transpose(-2, -1)) * _decay_matrix(b)  # (B, H, N, C, C)
        q_from_start, k_to_end = qc * b.exp(), kc * (last - b).exp()
    else:  # per channel: Σ_d q_id k_jd exp(b_id - b_jd)
        within, q_from_start, k_to_end = _per_channel_terms(qc, kc, b)
    out = within @ vc  # (B, H, N, C, V)

    written = k_to_end.transpose(-2, -1) @ vc  # (B, H, N, K, V) decayed to the chunk's end
    across = last.exp().transpose(-2, -1)  # (B, H, N, G, 1)
    S = q.new_zeros(B, H, K, V) if state is None or state.S is None else state.S
    before = []  # the state entering each chunk: N small (K, V) matrices
    # unbound once: indexing chunk n in the loop would zero-fill a full-size gradient per chunk
    for across_n, written_n in zip(across.unbind(2), written.unbind(2), strict=True):
        before.append(S)
        S = across_n * S + written_n
    out = out + q_from_start @ torch.stack(before, 2)  # (B, H, N, C, V) the past, decayed
    if state is not None:
        state.S = S
        state.length += T
    return out.reshape(B, H, N * C, V)[:, :, :T]


def recurrent_decay_attention(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, state: DecayState
) -> Tensor:
    """The RNN form, one token at a time: S_t = diag(α_t) S_{t-1} + k_t^T v_t, o_t = q_t S_t."""
    if state.S is None:
        B, H, _, K = q.shape
        state.S = q.new_zeros(B, H, K, v.size(-1))
    outputs = []
    for t in range(q.size(2)):
        alpha = log_decay[:, :, t].exp()[..., None]  # (B, H, G, 1)
        state.S = alpha * state.S + k[:, :, t, :, None] * v[:, :, t, None, :]  # (B, H, K, V)
        outputs.append((q[:, :, t, None, :] @ state.S).squeeze(-2))  # (B, H, V)
        state.length += 1
    return torch.stack(outputs, dim=2)


def decay_attention_matrix(q: Tensor, k: Tensor, log_decay: Tensor, chunk_size: int) -> Tensor:
    """The (B, H, T, T) matrix A with o = A v: the chunked form run on one-hot values."""
    B, H, T, _ = q.shape
    one_hot = torch.eye(T, dtype=q.dtype, device=q.device).expand(B, H, T, T)
    return chunked_decay_attention(q, k, one_hot, log_decay, chunk_size, state=None)


class HeadNormProjection(nn.Linear):
    """The output projection W_o after a per-head RMSNorm (its gain shared by the heads):
    (B, T, H * D) -> (B, T, C). The base's output gate, when on, multiplies after the norm."""

    gate_after_norm = True  # the base passes `gate` here rather than multiplying y by it

    def __init__(self, n_head: int, head_dim: int, bias: bool, eps: float) -> None:
        super().__init__(n_head * head_dim, n_head * head_dim, bias=bias)
        self.n_head = n_head
        self.eps = eps
        self.norm_weight = nn.Parameter(torch.ones(head_dim))

    def forward(self, y: Tensor, gate: Tensor | None = None) -> Tensor:
        heads = y.unflatten(-1, (self.n_head, -1))  # (B, T, H, D)
        heads = F.rms_norm(heads, (heads.size(-1),), self.norm_weight, self.eps)
        y = heads.flatten(-2)
        return super().forward(y if gate is None else y * gate)


class DecayAttention(CausalSelfAttention):
    """Causal linear attention with decay, in its chunked, recurrent and materialised forms;
    a subclass gives `log_decay(x)`, the per-token log α. Its gates g are that log α."""

    def __init__(
        self, *args: Any, chunk_size: int = 64, norm_eps: float = 1e-5, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if chunk_size < 1:
            raise ConfigError(f"attention.chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        self.attn_dropout = nn.Identity()  # no dropout on an implicit matrix
        bias = self.proj.bias is not None
        self.proj = HeadNormProjection(self.n_head, self.head_dim, bias, norm_eps)

    @abstractmethod
    def log_decay(self, x: Tensor) -> Tensor:
        """log α (B, H, T, 1 or D) <= 0 of the tokens of the layer input x (B, T, C)."""

    def gates(self, x: Tensor) -> Tensor:
        return self.log_decay(x)

    def scale(self, q: Tensor) -> Tensor:
        return q * self.head_dim**-0.5  # fla's convention: q scaled by D^-1/2

    def attend(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None) -> Tensor:
        scale = self.head_dim**-0.5  # the kernel scales q
        return chunked_decay_attention(q, k, v, _log_alpha(g, q), self.chunk_size, None, scale)

    def attention_matrix(self, q: Tensor, k: Tensor, g: Tensor | None = None) -> Tensor:
        return decay_attention_matrix(self.scale(q), k, _log_alpha(g, q), self.chunk_size)

    def _new_core_cache(self) -> DecayState:
        return DecayState()

    def decode(
        self, q: Tensor, k: Tensor, v: Tensor, cache: DecayState, g: Tensor | None = None
    ) -> Tensor:
        k, v, log_decay = self._repeat_kv(k), self._repeat_kv(v), _log_alpha(g, q)
        if q.size(2) == 1:
            return recurrent_decay_attention(self.scale(q), k, v, log_decay, cache)
        scale = self.head_dim**-0.5
        return chunked_decay_attention(q, k, v, log_decay, self.chunk_size, cache, scale)


def _log_alpha(g: Tensor | None, q: Tensor) -> Tensor:
    """The gates of a decay core, log α, in q's dtype (the dtype the kernels compute in)."""
    if g is None:
        raise ValueError("decay attention needs its gates, log α: pass g = module.gates(x)")
    return g.to(q.dtype)
