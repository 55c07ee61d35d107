"""The delta rule with an optional per-token decay: the core of DeltaNet, Gated DeltaNet, KDA
and Gated DeltaProduct.

With the state kept as S (D_k x D_v) (o_t = S_t^T q_t, the papers' S transposed), unit keys,
write strengths β_t in (0, 1) (or (0, 2): `allow_neg_eigval`) and decays α_t in (0, 1]
(α_t = 1: plain DeltaNet),

    S_t = α_t (I - β_t k_t k_t^T) S_{t-1} + β_t k_t v_t^T,   o_t = S_t^T q_t

i.e. S_t = α_t S_{t-1} + k_t u_t^T with the corrected value u_t = β_t (v_t - α_t S_{t-1}^T k_t):
the state's prediction for k_t moves a fraction β_t of the way to v_t. Three forms that agree:

- chunked (training, prefill; Yang et al. 2024, "Parallelizing Linear Transformers with the
  Delta Rule over Sequence Length", the UT transform): inside a chunk of C positions, with
  γ_i = Π_{j<=i} α_j from the chunk start and Γ_ij = γ_i / γ_j (j <= i),
      (I + A) U = diag(β) V - diag(β γ) K S_0,   A_ij = β_i Γ_ij k_i·k_j  (j < i),
  one unit-triangular solve per chunk; then O = diag(γ) Q S_0 + (Q K^T ⊙ Γ ⊙ M) U and
  S_C = γ_C S_0 + (K ⊙ Γ_Cj)^T U carry a (D_k x D_v) state across chunks; never a (T, D, D)
  tensor of prefix states (one autograd Function with its own backward: chunked_delta_rule.py);
- recurrent (decoding): the update above, one token at a time, O(1) per token;
- materialised: the core is linear in v, O = M_att V with
      M_att = (Q K^T ⊙ Γ ⊙ M) (I + A)^{-1} diag(β)   over the whole sequence (S_0 = 0).

A decay per key channel (KDA: S_t = (I - β_t k_t k_t^T) diag(α_t) S_{t-1} + β_t k_t v_t^T,
log α (B, H, T, D_k)) takes the same three forms, with Σ_d q_id k_jd Γ^(d)_ij in place of
(q_i·k_j) Γ_ij: chunked_channel_delta_rule.py (scaled copies of q and k), the recurrent update
with diag(α_t), the matrix through a (D_k, T, T) tensor of decays.

Decays enter as log α (per head and token), so products are exp of differences of cumulative
sums and never a ratio of underflowing products. `DeltaRuleAttention` runs the three forms as an
attention core; a variant gives only its gates (β, and optionally log α) through `gates(x)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attn_lightning.attention.base import CausalSelfAttention
from attn_lightning.attention.chunked_channel_delta_rule import (
    FACTOR_BOUND,
    ChunkedChannelDeltaRule,
)
from attn_lightning.attention.chunked_delta_rule import ChunkedDeltaRule
from attn_lightning.errors import ConfigError


class DeltaRuleState:
    """The recurrent state of one layer: S (B, H, D_k, D_v)."""

    def __init__(self) -> None:
        self.length = 0
        self.S: Tensor | None = None


class UnitFeatures(torch.autograd.Function):
    """φ(x) = s / max(|s|, eps) per row, s = SiLU(x) (or s = x): x (R, N, C, D) in any layout
    -> φ(x) (N, R, C, D) contiguous, the chunk-major layout the chunked form reads.

    Written out, with y = φ(x) and r = 1 / max(|s|, eps): ds = r (dy - y (y · dy)) (r dy where
    the eps bound holds), then SiLU's derivative. Autograd on the tensor expression makes a
    full pass backward per op (the product, the norm's sum, the square, their broadcasts and
    accumulations); this is a row dot and three passes, and the result lands in chunk-major
    order directly instead of through a copy (and its copy back in the backward)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, silu: bool, eps: float) -> Tensor:  # type: ignore[override]
        s = F.silu(x) if silu else x
        squared = torch.einsum("...d,...d->...", s, s)  # (R, N, C) |s|^2
        bounded = squared < eps**2  # there the norm is the constant eps
        r = squared.clamp_min_(eps**2).rsqrt_()[..., None]  # (R, N, C, 1)
        R, N, C, D = x.shape
        y = x.new_empty(N, R, C, D)
        torch.mul(s, r, out=y.transpose(0, 1))
        ctx.save_for_backward(x if silu else None, y, r, bounded)
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        x, y, r, bounded = ctx.saved_tensors
        along = torch.einsum("...d,...d->...", y, dy).transpose(0, 1)  # (R, N, C) y · dy
        along.masked_fill_(bounded, 0.0)
        ds = r.new_empty(*r.shape[:-1], y.size(-1))  # (R, N, C, D) in x's layout
        torch.addcmul(dy.transpose(0, 1), y.transpose(0, 1), along[..., None], value=-1, out=ds)
        ds.mul_(r)
        if x is not None:
            torch.ops.aten.silu_backward.grad_input(ds, x, grad_input=ds)
        return ds, None, None


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)  # the triangular solve wants >= fp32


def _decay_matrix(b: Tensor) -> Tensor:
    """Cumulative log decays b (..., C) -> Γ ⊙ M (..., C, C): exp(b_i - b_j) for j <= i, else 0."""
    C = b.size(-1)
    future = torch.ones(C, C, dtype=torch.bool, device=b.device).triu(1)
    return (b[..., :, None] - b[..., None, :]).masked_fill_(future, float("-inf")).exp_()


def chunked_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    log_alpha: Tensor | None = None,
    chunk_size: int = 16,
    state: DeltaRuleState | None = None,
    features: Callable[[Tensor], Tensor] | None = None,
    query_stride: int = 1,
) -> Tensor:
    """q: (B, H, T / s, D_k), k: (B, H, T, D_k) unit vectors; v: (B, H, T, D_v); beta:
    (B, H, T); log_alpha: (B, H, T), or (B, H, T, D_k) for a decay per key channel ->
    (B, H, T / s, D_v). With query_stride s > 1 the queries and outputs are those of every
    s-th position (s - 1, 2 s - 1, ..; T a multiple of s; a decay per token only): the
    positions between are steps that no query reads (gated_deltaproduct.py's sub-steps).
    Continues from `state` and advances it when one is given. With `features` (x (R, N, C, D)
    -> φ(x) (N, R, C, D), as UnitFeatures), q and k are raw and φ is applied on the way into
    the chunk-major layout; φ(0) = 0 keeps the padding zero.

    A per-channel decay runs chunked_channel_delta_rule.py at the largest chunk size up to
    `chunk_size` (halving it) at which no chunk decays by more than e^-FACTOR_BOUND after its
    first position, so that its factors stay finite (chunk size 1 always does)."""
    dtype = v.dtype
    q, k, v, beta = (x.to(_compute_dtype(v)) for x in (q, k, v, beta))
    B, H, T, K = k.shape
    V = v.size(-1)
    s = query_stride
    per_channel = log_alpha is not None and log_alpha.dim() == 4
    if T % s or (s > 1 and per_channel):
        raise ValueError(f"query_stride {s} needs T = {T} a multiple of it and a decay per token")
    C = max(s, min(chunk_size, T) // s * s)  # a multiple of s
    if per_channel:
        C = _channel_chunk_size(log_alpha, C)  # type: ignore[arg-type]
    pad = (-T) % C  # padded positions: k = v = 0, β = 0, α = 1; they change nothing
    if pad:
        q = F.pad(q, (0, 0, 0, pad // s))
        k, v = (F.pad(x, (0, 0, 0, pad)) for x in (k, v))
        beta = F.pad(beta, (0, pad))
    N = (T + pad) // C
    rows = B * H

    def chunk_major(x: Tensor) -> Tensor:  # (B, H, N * c, ...) -> (N, B * H, c, ...)
        return x.reshape(rows, N, -1, *x.shape[3:]).transpose(0, 1).contiguous()

    def unit_chunk_major(x: Tensor) -> Tensor:
        return chunk_major(x) if features is None else features(x.reshape(rows, N, -1, K))

    b = None
    if log_alpha is not None and not per_channel:  # log γ_i from the chunk start
        log_alpha = F.pad(log_alpha.to(beta.dtype), (0, pad)) if pad else log_alpha.to(beta.dtype)
        b = chunk_major(log_alpha).cumsum(-1)
    S0 = None if state is None or state.S is None else state.S.to(q.dtype).reshape(rows, K, V)
    if S0 is not None and S0.requires_grad:
        raise ValueError("chunked_delta_rule: the carried state gets no gradient; detach it")
    if per_channel:  # log α (N, R, C, D_k) per channel
        log_alpha = log_alpha.to(beta.dtype)  # type: ignore[union-attr]
        log_alpha = F.pad(log_alpha, (0, 0, 0, pad)) if pad else log_alpha
        out, S = ChunkedChannelDeltaRule.apply(
            unit_chunk_major(q),
            unit_chunk_major(k),
            chunk_major(v),
            chunk_major(beta),
            chunk_major(log_alpha),
            S0,
        )
    else:
        out, S = ChunkedDeltaRule.apply(
            unit_chunk_major(q), unit_chunk_major(k), chunk_major(v), chunk_major(beta), b, S0
        )
    if state is not None:
        state.S = S.view(B, H, K, V)
        state.length += T
    out = out.view(N, B, H, C // s, V).permute(1, 2, 0, 3, 4).reshape(B, H, N * C // s, V)
    return out[:, :, : T // s].to(dtype)  # (B, H, T / s, D_v)


def _channel_chunk_size(log_alpha: Tensor, C: int) -> int:
    """The largest of C, C / 2, ..., 1 at which every chunk's decay after its first position,
    -Σ_{i>1} log α_i per channel, stays within FACTOR_BOUND (one reduction per size tried;
    a host sync on a GPU). log_alpha: (B, H, T, D_k) <= 0."""
    log_alpha = log_alpha.detach()
    T = log_alpha.size(2)
    while C > 1:
        pad = (-T) % C
        padded = F.pad(log_alpha, (0, 0, 0, pad)) if pad else log_alpha
        chunks = padded.unflatten(2, (-1, C))  # (B, H, N, C, K)
        if bool(chunks[:, :, :, 1:].sum(3).amin() >= -FACTOR_BOUND):
            break
        C //= 2
    return C


def recurrent_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    log_alpha: Tensor | None,
    state: DeltaRuleState,
) -> Tensor:
    """The RNN form, one token at a time: q, k (B, H, T, D_k), v (B, H, T, D_v), beta
    (B, H, T) and log_alpha (B, H, T), or (B, H, T, D_k) per key channel."""
    dtype = v.dtype
    q, k, v, beta = (x.to(_compute_dtype(v)) for x in (q, k, v, beta))
    B, H, T, K = k.shape
    if state.S is None:
        state.S = q.new_zeros(B, H, K, v.size(-1))
    S = state.S.to(q.dtype)
    outputs = []
    for t in range(T):
        k_t, v_t = k[:, :, t], v[:, :, t]  # (B, H, D_k), (B, H, D_v)
        if log_alpha is not None and log_alpha.dim() == 4:
            S = log_alpha[:, :, t, :, None].to(S.dtype).exp() * S  # diag(α_t) S_{t-1}
        elif log_alpha is not None:
            S = log_alpha[:, :, t, None, None].to(S.dtype).exp() * S  # α_t S_{t-1}
        u_t = beta[:, :, t, None] * (v_t - (k_t[..., None, :] @ S).squeeze(-2))  # (B, H, D_v)
        S = S + k_t[..., :, None] * u_t[..., None, :]  # (B, H, D_k, D_v)
        outputs.append((q[:, :, t, None, :] @ S).squeeze(-2))
    state.S = S
    state.length += T
    return torch.stack(outputs, dim=2).to(dtype)


def delta_rule_matrix(
    q: Tensor, k: Tensor, beta: Tensor, log_alpha: Tensor | None = None
) -> Tensor:
    """The equivalent (B, H, T, T) matrix M_att = (Q K^T ⊙ Γ ⊙ M) (I + A)^{-1} diag(β); with a
    decay per key channel (log_alpha (B, H, T, D_k)) the products are Σ_d q_id k_jd Γ^(d)_ij,
    through a (B, H, D_k, T, T) tensor of decays."""
    dtype = q.dtype
    q, k, beta = (x.to(_compute_dtype(q)) for x in (q, k, beta))
    if log_alpha is not None and log_alpha.dim() == 4:
        decays = _decay_matrix(log_alpha.to(beta.dtype).cumsum(-2).transpose(-2, -1))
        keys = torch.einsum("bhid,bhjd,bhdij->bhij", k, k, decays)  # Σ_d k_id k_jd Γ^(d)_ij
        scores = torch.einsum("bhid,bhjd,bhdij->bhij", q, k, decays)
        A = (beta[..., None] * keys).tril(-1)
    else:
        log_alpha = torch.zeros_like(beta) if log_alpha is None else log_alpha.to(beta.dtype)
        decay = _decay_matrix(log_alpha.cumsum(-1))  # (B, H, T, T)
        A = (beta[..., None] * (k @ k.transpose(-2, -1)) * decay).tril(-1)
        scores = (q @ k.transpose(-2, -1)) * decay
    eye = torch.eye(q.size(2), dtype=A.dtype, device=A.device)
    solved = torch.linalg.solve_triangular(
        eye + A, torch.diag_embed(beta), upper=False, unitriangular=True
    )  # (B, H, T, T) (I + A)^{-1} diag(β)
    return (scores @ solved).to(dtype)


class DeltaRuleAttention(CausalSelfAttention):
    """The delta-rule core on q, k normalised as φ(x) = SiLU(x) / ||SiLU(x)||_2 (Yang et al.
    2024's best feature map; fla's layers do the same), in its chunked, recurrent and
    materialised forms. A subclass supplies `gates(x)`: (B, H, T, 1) holding β, or
    (B, H, T, 2) holding β and log α. Without gates (a caller timing the core alone),
    β = 1 and α = 1.

    With `allow_neg_eigval` (Grazzi et al. 2025, "Unlocking State-Tracking in Linear RNNs
    Through Negative Eigenvalues"; fla's layers' option of the same name) β = 2 σ(.) lies in
    (0, 2): the transition I - β k k^T has the eigenvalue 1 - β in (-1, 1) along k (β = 2 is a
    reflection), which lets the recurrence track states a positive spectrum cannot (parity).

    Conventions (checked against fla's naive.py references and layers):
    - no 1/sqrt(D) on q and no per-head output RMSNorm (nor Gated DeltaNet's output gate):
      with unit k and β in (0, 2), I - β k k^T is non-expansive (|1 - β| < 1 along k), so
      the state's answers stay on v's scale and the output needs no rescaling to train; fla
      scales q by 1/sqrt(D) because its RMSNorm undoes the scale. A norm of the output would
      be non-linear in v and break `attention_matrix(q, k, g) @ v == attend(q, k, v, g)`;
    - SiLU on q and k only (the feature map), not on v (fla's SiLU on v comes with its short
      convolution, as here with `short_conv`); with `rope`, the rotation comes before φ
      (norm-preserving, so k stays a unit vector)."""

    def __init__(
        self,
        *args: Any,
        chunk_size: int = 16,
        eps: float = 1e-6,
        allow_neg_eigval: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if chunk_size < 1:
            raise ConfigError(f"attention.chunk_size must be >= 1, got {chunk_size}")
        if not isinstance(allow_neg_eigval, bool):
            raise ConfigError(
                f"attention.allow_neg_eigval={allow_neg_eigval!r} must be true or false"
            )
        self.chunk_size = chunk_size
        self.eps = eps
        self.allow_neg_eigval = allow_neg_eigval
        self.attn_dropout = nn.Identity()  # no dropout on an implicit matrix

    def write_strength(self, logits: Tensor) -> Tensor:
        """β = σ(logits) in (0, 1), or 2 σ(logits) in (0, 2) with `allow_neg_eigval`."""
        beta = logits.sigmoid()
        return 2 * beta if self.allow_neg_eigval else beta

    def unit_features(self, x: Tensor) -> Tensor:
        """φ on (R, N, C, D) -> (N, R, C, D) (UnitFeatures). With short_conv the convolution's
        SiLU is φ's SiLU (one SiLU, as in fla's layers)."""
        return UnitFeatures.apply(x, getattr(self, "qkv_conv", None) is None, self.eps)

    def features(self, x: Tensor) -> Tensor:
        """(B, H, T, D) queries or keys -> unit vectors φ(x) (B, H, T, D)."""
        B, H, T, D = x.shape
        return self.unit_features(x.reshape(B * H, 1, T, D)).view(B, H, T, D)

    def write_and_decay(self, g: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor | None]:
        """Gates (B, H, T, G) -> β (B, H, T) and log α (B, H, T) or None (no decay)."""
        if g is None:
            return like.new_ones(like.shape[:3]), None
        return g[..., 0], (g[..., 1] if g.size(-1) > 1 else None)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None) -> Tensor:
        beta, log_alpha = self.write_and_decay(g, q)
        return chunked_delta_rule(
            q, k, v, beta, log_alpha, self.chunk_size, features=self.unit_features
        )

    def attention_matrix(self, q: Tensor, k: Tensor, g: Tensor | None = None) -> Tensor:
        beta, log_alpha = self.write_and_decay(g, q)
        return delta_rule_matrix(self.features(q), self.features(k), beta, log_alpha)

    def _new_core_cache(self) -> DeltaRuleState:
        return DeltaRuleState()

    def decode(
        self, q: Tensor, k: Tensor, v: Tensor, cache: DeltaRuleState, g: Tensor | None = None
    ) -> Tensor:
        beta, log_alpha = self.write_and_decay(g, q)
        q, k, v = self.features(q), self.features(self._repeat_kv(k)), self._repeat_kv(v)
        if q.size(2) == 1:
            return recurrent_delta_rule(q, k, v, beta, log_alpha, cache)
        return chunked_delta_rule(q, k, v, beta, log_alpha, self.chunk_size, cache)
