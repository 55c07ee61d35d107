"""A slab of chunks of the chunked DPLR core (dplr_kernel.py): the terms formed from them, and
the inputs they are formed from, as given (GivenInputs) or from RWKV-7's own (RWKV7Inputs).

A slab is s whole steps of the scan: chunks n0..n1-1 of every row, taken as step-major views
(chunk_view) of the (B, H, T, ·) inputs. Its terms are formed, used and dropped while they are
small (dplr_kernel.ChunkedDPLR's docstring says why); the inputs' classes hand the slab's chunks
to ChunkTerms and take the slab's gradients back to the tensors they were given.
"""

from __future__ import annotations

import torch
from torch import Tensor

sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input  # dy σ (1 - σ), into grad_input


class ChunkConstants:
    """What every slab of a call shares, for chunks of C positions and log w = scale · decay:
    the (2C, 2C) mask of the scores [Q̃; Ā] [K̄; B̄]^T (the query rows see positions j <= i of
    both blocks, the reading rows (Ā) j < i: u_i reads S_{i-1}), the (C, C) matrix that makes
    the cumulative log-decays c = cumsum · decay, and the (C, 2C) one that takes their
    gradients back, d decay = reverse · [dc; de] (c_i sums positions <= i, e_i = c_{i-1}
    those < i). Cumulative sums as products: one matmul per slab, not C slices."""

    def __init__(self, C: int, scale: float, like: Tensor) -> None:
        i = torch.arange(2 * C, device=like.device)[:, None]
        j = torch.arange(2 * C, device=like.device)[None, :]
        self.mask = torch.where(i < C, j % C <= i % C, j % C < i % C).to(like.dtype)
        ones = torch.ones(C, C, dtype=like.dtype, device=like.device)
        self.cumsum = ones.tril().mul_(scale)
        self.reverse = torch.cat((ones.triu(), ones.triu(1)), 1).mul_(scale)


def chunk_view(x: Tensor, n0: int, n1: int, C: int) -> Tensor:
    """Chunks n0..n1-1 of x (B, H, T, D) as a view (n1 - n0, B, H, C, D): step-major, the
    order the scan reads them in."""
    return x[:, :, n0 * C : n1 * C].unflatten(2, (n1 - n0, C)).permute(2, 0, 1, 3, 4)


class ChunkTerms:
    """The terms of a slab of s steps' chunks (the views of `chunk_view`), each (X, ·, ·) with
    X = s B H chunks, step-major: grow = exp(c) and shrink = exp(-c) (X, C, K), reads = [Q̃; Ā]
    and keys = [K̄; B̄] (X, 2C, K), the masked scores reads keys^T (X, 2C, 2C), values = [V; ·]
    (X, 2C, V) with room below V for the readings U, and g (X, K, 1); then (`solve`, or `use`
    as solved before) T̂ = -(I + tril_(-1)(Ā B̄^T))^{-1} (X, C, C) and W = T̂ Ā (X, C, K).

    The core is written with ā = -a (RWKV-7's κ̂), which keeps every sign in it a plus; the
    log-decays come as log w = scale · decay (RWKV-7's log w = -s σ(z_w) from σ(z_w))."""

    def __init__(self, chunks: tuple[Tensor, ...], shared: ChunkConstants) -> None:
        q, k, v, a_neg, b, decay = chunks
        s, B, H, C, K = q.shape  # chunk views (chunk_view)
        X, V = s * B * H, v.size(-1)
        c = torch.bmm(shared.cumsum.expand(X, C, C), decay.reshape(X, C, K))
        self.grow = c.exp_()  # c: the log-decay from the chunk start, position i included
        self.shrink = torch.reciprocal(self.grow)
        self.reads = q.new_empty(X, 2 * C, K)
        self.keys = q.new_empty(X, 2 * C, K)
        reads, keys = self.reads.view(s, B, H, 2 * C, K), self.keys.view(s, B, H, 2 * C, K)
        grow, shrink = self.grow.view(s, B, H, C, K), self.shrink.view(s, B, H, C, K)
        torch.mul(q, grow, out=reads[..., :C, :])  # Q̃ = q exp(c)
        reads[..., C, :].copy_(a_neg[..., 0, :])  # Ā = ā exp(e), e_i = c_{i-1}, e_0 = 0
        torch.mul(a_neg[..., 1:, :], grow[..., :-1, :], out=reads[..., C + 1 :, :])
        torch.mul(k, shrink, out=keys[..., :C, :])  # K̄ = k exp(-c)
        torch.mul(b, shrink, out=keys[..., C:, :])  # B̄ = b exp(-c)
        self.scores = torch.bmm(self.reads, self.keys.mT).mul_(shared.mask)
        self.values = q.new_empty(X, 2 * C, V)
        self.values.view(s, B, H, 2 * C, V)[..., :C, :].copy_(v)
        self.v = self.values[:, :C]
        self.g = self.grow[:, -1, :, None]  # (X, K, 1) the decay across the chunk
        self.inverse: Tensor  # T̂ and W, once solved or given
        self.W: Tensor

    def solve(self, inverse: Tensor, readings: Tensor) -> Tensor:
        """T̂ and W, with T̂ written to `inverse` (X, C, C); -> U_0 = T̂ tril_(-1)(Ā K̄^T) V
        written to `readings` (X, C, V) (the scan makes it U_n = U_0 + W S_n in place)."""
        C = self.grow.size(1)
        eye = torch.eye(C, dtype=inverse.dtype, device=inverse.device)
        torch.linalg.solve_triangular(  # (I + tril_(-1)(Ā B̄^T)) T̂ = -I, unit lower triangular
            self.scores[:, C:, C:], eye.neg_(), upper=False, unitriangular=True, out=inverse
        )
        self.use(inverse)
        return torch.bmm(inverse, self.scores[:, C:, :C] @ self.v, out=readings)

    def use(self, inverse: Tensor) -> None:
        """T̂ as solved before, and W = T̂ Ā."""
        self.inverse = inverse
        self.W = torch.bmm(inverse, self.reads[:, inverse.size(1) :])


class GivenInputs:
    """The core's inputs as given: q, k, a, b, log w (B, H, T, K) and v (B, H, T, V)."""

    scale = 1.0  # log w as given

    def __init__(self, *tensors: Tensor) -> None:
        self.tensors = tensors

    def chunks(self, n0: int, n1: int, C: int) -> tuple[Tensor, ...]:
        """Chunks n0..n1-1 of q, k, v, ā = -a, b and log w, (s, B, H, C, ·) each."""
        q, k, v, a, b, log_w = (chunk_view(x, n0, n1, C) for x in self.tensors)
        return q, k, v, a.neg(), b, log_w

    def new_grads(self, steps: int, C: int) -> list[Tensor]:
        return [torch.empty_like(x) for x in self.tensors]

    def put_grads(self, n0: int, n1: int, C: int, slab: list[Tensor], grads: list[Tensor]):
        """The gradients to the slab's k, ā, b and log w, (s, B, H, C, ·) each, into grads
        (the core writes q's and v's itself)."""
        dk, da_neg, db, d_log_w = slab
        for i, part in ((1, dk), (4, db), (5, d_log_w)):
            chunk_view(grads[i], n0, n1, C).copy_(part)
        torch.neg(da_neg, out=chunk_view(grads[3], n0, n1, C))  # da = -dā

    def finish_grads(self, grads: list[Tensor]) -> list[Tensor]:
        return grads


class RWKV7Inputs:
    """RWKV-7's inputs, from which the core's are formed a slab at a time (never a full-size
    tensor of them, nor of their gradients): the receptance r (the query), k, v (B, H, T, D),
    the gate logits z = [z_w | z_a] (B, H, T, 2 D), ξ and α (H, D):

        log w = -s σ(z_w),  a_t = σ(z_a),  κ̂ = normalise(k ⊙ ξ),  k̃ = k ⊙ (1 + (a_t - 1) ⊙ α),
        ā = -a = κ̂,  b = κ̂ ⊙ a_t

    (s = `decay_scale`; the norm is max(|k ⊙ ξ|, eps), F.normalize's). The backward of the
    slab just formed (`put_grads` after `chunks`, slab by slab) is, with dκ̂ = db ⊙ a_t + dā:

        d a_t = db ⊙ κ̂ + dk̃ ⊙ k ⊙ α,   dα = Σ dk̃ ⊙ k ⊙ (a_t - 1),
        d(k ⊙ ξ) = (dκ̂ - κ̂ (κ̂ · dκ̂)) / |k ⊙ ξ|  (dκ̂ / eps where the norm is eps),
        dξ = Σ d(k ⊙ ξ) ⊙ k,   dk = dk̃ ⊙ (1 + (a_t - 1) ⊙ α) + d(k ⊙ ξ) ⊙ ξ,
        dz_w = dσ(z_w) ⊙ σ(z_w) (1 - σ(z_w)) with dσ(z_w) = -s d log w,
        dz_a = d a_t ⊙ a_t ⊙ (1 - a_t)

    (the sums over batch and positions: ξ and α are per channel; they gather in slab-shaped
    accumulators, summed once at the end)."""

    def __init__(self, *tensors: Tensor, eps: float, decay_scale: float) -> None:
        self.tensors = tensors  # r, k, v, z, ξ, α
        self.eps, self.scale = eps, -decay_scale
        _, _, _, _, xi, alpha = tensors
        self.xi, self.alpha = xi[:, None], alpha[:, None]  # (H, 1, D), against (s, B, H, C, D)
        self.keep = 1 - self.alpha  # k̃ = k ⊙ (1 - α + α a_t)
        self.formed: tuple[Tensor, ...] = ()
        self.sums: tuple[Tensor, Tensor] | None = None

    def chunks(self, n0: int, n1: int, C: int) -> tuple[Tensor, ...]:
        """Chunks n0..n1-1 of r, k̃, v, ā = κ̂, b and σ(z_w) (log w = scale σ(z_w)),
        (s, B, H, C, ·) each."""
        r, k, v, z, _, _ = self.tensors
        D = k.size(-1)
        k = chunk_view(k, n0, n1, C)
        sig = torch.sigmoid(chunk_view(z, n0, n1, C))  # [σ(z_w) | a_t]
        k_xi = k * self.xi
        norm = torch.linalg.vector_norm(k_xi, dim=-1, keepdim=True)
        bounded = norm < self.eps  # there the norm is the constant eps
        kappa = k_xi.div_(norm.clamp_min_(self.eps))  # κ̂
        rate = sig[..., D:]  # a_t
        boost = torch.addcmul(self.keep, self.alpha, rate)  # 1 + (a_t - 1) ⊙ α
        self.formed = (k, sig, kappa, norm, bounded, boost)
        key, b = boost * k, kappa * rate  # k̃, b
        return chunk_view(r, n0, n1, C), key, chunk_view(v, n0, n1, C), kappa, b, sig[..., :D]

    def new_grads(self, steps: int, C: int) -> list[Tensor]:
        r, k, v, z, _, _ = self.tensors
        B, H, _, D = k.shape
        self.sums = (k.new_zeros(steps, B, H, C, D), k.new_zeros(steps, B, H, C, D))
        return [torch.empty_like(x) for x in (r, k, v, z)]

    def put_grads(self, n0: int, n1: int, C: int, slab: list[Tensor], grads: list[Tensor]):
        """The gradients to the slab's k̃, ā, b and σ(z_w), (s, B, H, C, ·) each, as gradients
        to k and z into grads, and to ξ and α into the sums (the core writes r's and v's)."""
        assert self.sums is not None
        d_key, da, db, d_decay = slab
        k, sig, kappa, norm, bounded, boost = self.formed
        s, D = n1 - n0, k.size(-1)
        xi_sum, alpha_sum = (x[:s] for x in self.sums)
        rate = sig[..., D:]
        g_k, g_z = chunk_view(grads[1], n0, n1, C), chunk_view(grads[3], n0, n1, C)
        d_kappa = torch.addcmul(da, db, rate)
        key_by_k = d_key * k  # dk̃ ⊙ k
        alpha_sum.addcmul_(key_by_k, rate - 1)
        d_rate = torch.mul(db, kappa).addcmul_(key_by_k, self.alpha)
        along = (kappa * d_kappa).sum(-1, keepdim=True).masked_fill_(bounded, 0.0)
        d_k_xi = d_kappa.addcmul_(kappa, along, value=-1).div_(norm)  # d(k ⊙ ξ)
        xi_sum.addcmul_(d_k_xi, k)
        torch.mul(d_key, boost, out=g_k).addcmul_(d_k_xi, self.xi)
        sigmoid_backward(d_decay, sig[..., :D], grad_input=g_z[..., :D])
        sigmoid_backward(d_rate, rate, grad_input=g_z[..., D:])

    def finish_grads(self, grads: list[Tensor]) -> list[Tensor]:
        """grads with ξ's and α's: their sums over batch and positions (H, D)."""
        assert self.sums is not None
        return grads + [x.sum((0, 1, 3)) for x in self.sums]
