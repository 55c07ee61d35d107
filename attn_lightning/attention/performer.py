"""Performer / FAVOR+ (Choromanski et al. 2020), causal.

Softmax's kernel is estimated with positive orthogonal random features: with x̂ = x / d^(1/4)
and the rows w_1..w_M of an orthogonal random projection (each scaled to a Gaussian norm),

    exp(q̂·k̂) = E_w[φ(q̂) φ(k̂)],   φ(x)_r = exp(w_r·x - |x|²/2) / sqrt(M)

and attention becomes causal linear attention on these features, with eps = 0 (chunked for
training, recurrent for decoding; linear_kernel.py). Its cost over linear attention's is the
M ~ d ln d features: a state M / d times larger, and the feature map, one autograd Function
computed a slab of rows at a time (`PositiveRandomFeatures`).

Numerical stabilisation, kept strictly causal: a query's features are divided by their own
maximum (exp(a - max a); the constant cancels between numerator and denominator of that row);
a key's features are divided by the data-independent bound exp(max_r |w_r|²/2) >= exp(w·x -
|x|²/2), so key features are <= 1 without any statistic over other positions (FAVOR+'s global
max over keys would let future keys influence the past through rounding and the eps term).
Keys of norm far above |w| (~sqrt(d)) underflow to zero; the output is then zero, not NaN.

The projection is a buffer (checkpointed) and is redrawn every `redraw_interval` training
forward passes; draw n uses a generator seeded by (feature_seed, n), both buffers, so a
resumed run draws the same projections.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from attn_lightning.attention.linear_kernel import KernelAttention, chunked_causal_linear_attention
from attn_lightning.errors import ConfigError


def orthogonal_random_features(nb_features: int, dim: int, generator: torch.Generator) -> Tensor:
    """(nb_features, dim) rows: orthogonal within blocks of `dim`, Gaussian-distributed norms."""
    blocks = []
    for _ in range(math.ceil(nb_features / dim)):
        gaussian = torch.randn(dim, dim, generator=generator)
        q, _ = torch.linalg.qr(gaussian)
        blocks.append(q.T)  # rows orthonormal
    rows = torch.cat(blocks)[:nb_features]
    norms = torch.randn(nb_features, dim, generator=generator).norm(dim=1, keepdim=True)
    return rows * norms


class PerformerAttention(KernelAttention):
    """Causal FAVOR+ attention with positive orthogonal random features."""

    eps = 0.0  # as published; a normaliser that underflows is clamped (linear_kernel.py)

    def __init__(
        self,
        *args: Any,
        nb_features: int | None = None,
        redraw_interval: int | None = 1000,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        d = self.head_dim
        if nb_features is not None and nb_features < 1:
            raise ConfigError(f"attention.nb_features must be >= 1 or null, got {nb_features}")
        self.nb_features = nb_features or max(1, round(d * math.log(d)))  # ~ d ln d
        if redraw_interval is not None and redraw_interval < 1:
            raise ConfigError(
                f"attention.redraw_interval must be >= 1 or null, got {redraw_interval}"
            )
        self.redraw_interval = redraw_interval
        self.register_buffer("feature_seed", torch.randint(2**31 - 1, ()))  # from the global seed
        self.register_buffer("projection", self.draw_projection(0))  # (M, d)
        # A host-side int, not a buffer: reading a device buffer would sync every step on GPU.
        # It is saved in the checkpoint through get/set_extra_state.
        self.training_steps = 0

    def get_extra_state(self) -> dict[str, int]:
        return {"training_steps": self.training_steps}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.training_steps = int(state["training_steps"])

    def draw_projection(self, draw: int) -> Tensor:
        generator = torch.Generator().manual_seed(int(self.feature_seed) * 1_000_003 + draw)
        return orthogonal_random_features(self.nb_features, self.head_dim, generator)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        if self.training and self.redraw_interval is not None:
            step = self.training_steps
            if step > 0 and step % self.redraw_interval == 0:
                draw = step // self.redraw_interval
                self.projection.copy_(self.draw_projection(draw).to(self.projection))
            self.training_steps += 1
        return super().forward(x, *args, **kwargs)

    def features(self, x: Tensor, is_query: bool, align: int = 1) -> Tensor:
        """φ(x) (B, H, T, M) up to a per-row (queries) or global (keys) constant factor;
        with `align`, zero features pad M to a multiple of it."""
        w = self.projection.to(x.dtype)  # (M, d)
        return PositiveRandomFeatures.apply(x, w, is_query, ROWS_PER_SLAB, align)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None) -> Tensor:
        """The chunked form on features padded to a multiple of FEATURE_ALIGN: a zero feature
        adds nothing to a numerator or normaliser, and rows of aligned length (112 floats for
        the 111 features at d = 32) run the feature projection and the kernel's K^T V and
        g S^T products faster. Decoding keeps M features (its state holds exactly the
        method's)."""
        q, k = self.features(q, True, FEATURE_ALIGN), self.features(k, False, FEATURE_ALIGN)
        return chunked_causal_linear_attention(q, k, v, self.chunk_size, self.eps, state=None)


# (2048, M) logits: cache-sized. A module constant passed to the Function, not a class
# attribute: torch.compile (compiled decoding) cannot read an autograd.Function's attributes.
ROWS_PER_SLAB = 2048
FEATURE_ALIGN = 16  # floats (64 bytes) per row of features on the training path


class PositiveRandomFeatures(torch.autograd.Function):
    """φ(x)_r = exp(w_r·x̂ - |x̂|²/2 - c), x̂ = x d^(-1/4), c the stabiliser (module docstring),
    computed a slab of rows at a time, in place.

    Why not autograd on the tensor expression: with M ~ d ln d features each step of it (the
    projection, the subtraction, the max, the exp and their backwards) writes a fresh
    (B, H, T, M) tensor, larger than q, k and v together, and on a CPU those passes over
    memory cost more than the attention itself. Here the forward writes φ once and the
    backward reads it once: dx = (dφ ⊙ φ) W̃ - x d^(-1/2) Σ_r (dφ ⊙ φ)_r with
    W̃ = W d^(-1/4); the stabiliser is a constant (detached), the projection a buffer (no
    grad).
    `rows_per_slab`: rows of x per slab (ROWS_PER_SLAB)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, w: Tensor, is_query: bool, rows_per_slab: int, align: int = 1
    ) -> Tensor:
        d, M = x.size(-1), w.size(0)
        padded = -(-M // align) * align  # features, the last padded - M of them zero
        w_scaled = w.new_zeros(padded, d)  # (padded, d): x̂ @ w.T = x @ w_scaled.T
        torch.mul(w, d**-0.25, out=w_scaled[:M])
        rows = x.reshape(-1, d)
        half_sq = rows.pow(2).sum(-1, keepdim=True).mul_(0.5 * d**-0.5)  # |x̂|²/2
        if not is_query:  # the data-independent bound exp(max_r |w_r|²/2) on key features
            half_sq.add_((w * w).sum(-1).max() / 2)
        phi = x.new_empty(rows.size(0), padded)
        step = rows_per_slab
        ctx.rows_per_slab = rows_per_slab
        for start in range(0, rows.size(0), step):
            s = slice(start, start + step)
            logits = torch.mm(rows[s], w_scaled.T, out=phi[s]).sub_(half_sq[s])
            if is_query:  # a query's own maximum: cancels within its row
                logits.sub_(logits[:, :M].amax(-1, keepdim=True))
            logits.exp_()
            logits[:, M:].zero_()
        ctx.save_for_backward(rows, w_scaled, phi)
        ctx.shape = x.shape
        return phi.view(*x.shape[:-1], padded)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:  # type: ignore[override]
        rows, w_scaled, phi = ctx.saved_tensors
        d = rows.size(-1)
        grad = grad.reshape(phi.shape)
        dx = torch.empty_like(rows)
        step = ctx.rows_per_slab
        for start in range(0, rows.size(0), step):
            s = slice(start, start + step)
            g = grad[s] * phi[s]  # (rows, M) d loss / d logits
            torch.mm(g, w_scaled, out=dx[s]).sub_(rows[s] * (g.sum(-1, keepdim=True) * d**-0.5))
        return dx.view(ctx.shape), None, None, None, None
