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

from attn_lightning.attention.chunked_channel_decay import _chunk_cumsum


def score_mask(C: int, like: Tensor) -> Tensor:
    """(2C, 2C) mask of the scores [Q̃; Ã] [K̄; B̄]^T: the query rows see positions j <= i of
    both blocks, the reading rows (Ã) j < i (u_i reads S_{i-1})."""
    i = torch.arange(2 * C, device=like.device)[:, None]
    j = torch.arange(2 * C, device=like.device)[None, :]
    return torch.where(i < C, j % C <= i % C, j % C < i % C).to(like.dtype)


def chunk_view(x: Tensor, n0: int, n1: int, C: int) -> Tensor:
    """Chunks n0..n1-1 of x (B, H, T, D) as a view (n1 - n0, B, H, C, D): step-major, the
    order the scan reads them in."""
    return x[:, :, n0 * C : n1 * C].unflatten(2, (n1 - n0, C)).permute(2, 0, 1, 3, 4)


class ChunkTerms:
    """The terms of a slab of s steps' chunks (the views of `chunk_view`), each (X, ·, ·) with
    X = s B H chunks, step-major: grow = exp(c) and shrink = exp(-c) (X, C, K), reads = [Q̃; Ã]
    and keys = [K̄; B̄] (X, 2C, K), the masked scores reads keys^T (X, 2C, 2C), (I - L)^{-1}
    (X, C, C), W (X, C, K), v and U = U_0 (X, C, V) (made U_n in place by the caller),
    g (X, K, 1) and M (X, K, K)."""

    def __init__(self, q: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, log_w: Tensor):
        s, B, H, C, K = q.shape  # chunk views (chunk_view)
        X = s * B * H
        c = log_w.clone(memory_format=torch.contiguous_format).view(X, C, K)
        _chunk_cumsum(c, reverse=False)  # log-decay from the chunk start, position i included
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
        self.scores = torch.bmm(self.reads, self.keys.mT).mul_(score_mask(C, q))
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


class GivenInputs:
    """The core's inputs as given: q, k, a, b, log w (B, H, T, K) and v (B, H, T, V)."""

    def __init__(self, *tensors: Tensor) -> None:
        self.tensors = tensors

    def chunks(self, n0: int, n1: int, C: int) -> tuple[Tensor, ...]:
        """Chunks n0..n1-1 of q, k, v, a, b and log w, (s, B, H, C, ·) each."""
        return tuple(chunk_view(x, n0, n1, C) for x in self.tensors)

    def new_grads(self) -> list[Tensor]:
        return [x.new_empty(x.shape) for x in self.tensors]

    def put_grads(self, n0: int, n1: int, C: int, slab: list[Tensor], grads: list[Tensor]):
        """The gradients to the slab's q, k, v, a, b, log w, (s, B, H, C, ·) each, into grads."""
        for full, part in zip(grads, slab, strict=True):
            chunk_view(full, n0, n1, C).copy_(part)


class RWKV7Inputs:
    """RWKV-7's inputs, from which the core's are formed a slab at a time (never a full-size
    tensor of them, nor of their gradients): the receptance r (the query), k, v (B, H, T, D),
    the gate logits z = [z_w | z_a] (B, H, T, 2 D), ξ and α (H, D):

        log w = -s σ(z_w),  a_t = σ(z_a),  κ̂ = normalise(k ⊙ ξ),  k̃ = k ⊙ (1 + (a_t - 1) ⊙ α),
        a = -κ̂,  b = κ̂ ⊙ a_t

    (s = `decay_scale`; the norm is max(|k ⊙ ξ|, eps), F.normalize's). The backward of the
    slab just formed (`put_grads` after `chunks`, slab by slab) is, with dκ̂ = db ⊙ a_t - da:

        d a_t = db ⊙ κ̂ + dk̃ ⊙ k ⊙ α,   dα = Σ dk̃ ⊙ k ⊙ (a_t - 1),
        d(k ⊙ ξ) = (dκ̂ - κ̂ (κ̂ · dκ̂)) / |k ⊙ ξ|  (dκ̂ / eps where the norm is eps),
        dξ = Σ d(k ⊙ ξ) ⊙ k,   dk = dk̃ ⊙ (1 + (a_t - 1) ⊙ α) + d(k ⊙ ξ) ⊙ ξ,
        dz_w = d log w ⊙ log w ⊙ (1 - σ(z_w)),   dz_a = d a_t ⊙ a_t ⊙ (1 - a_t)

    (the sums over batch and positions: ξ and α are per channel)."""

    def __init__(self, *tensors: Tensor, eps: float, decay_scale: float) -> None:
        self.tensors = tensors  # r, k, v, z, ξ, α
        self.eps, self.decay_scale = eps, decay_scale
        self.formed: tuple[Tensor, ...] = ()

    def chunks(self, n0: int, n1: int, C: int) -> tuple[Tensor, ...]:
        """Chunks n0..n1-1 of r, k̃, v, a, b and log w, (s, B, H, C, ·) each."""
        r, k, v, z, xi, alpha = self.tensors
        D = k.size(-1)
        xi, alpha = xi[:, None], alpha[:, None]  # (H, 1, D), against (s, B, H, C, D)
        k, z = chunk_view(k, n0, n1, C), chunk_view(z, n0, n1, C)
        sig_w = torch.sigmoid(z[..., :D])
        log_w = sig_w * -self.decay_scale
        rate = torch.sigmoid(z[..., D:])  # a_t
        k_xi = k * xi
        length = torch.linalg.vector_norm(k_xi, dim=-1, keepdim=True)
        bounded = length < self.eps  # there the norm is the constant eps
        norm = length.clamp_min_(self.eps)
        kappa = k_xi.div_(norm)  # κ̂
        boost = (rate - 1).mul_(alpha).add_(1)  # 1 + (a_t - 1) ⊙ α
        key = boost * k  # k̃
        self.formed = (k, sig_w, log_w, rate, kappa, norm, bounded, boost)
        return chunk_view(r, n0, n1, C), key, chunk_view(v, n0, n1, C), -kappa, kappa * rate, log_w

    def new_grads(self) -> list[Tensor]:
        *per_token, xi, alpha = self.tensors  # r, k, v, z; ξ and α take sums over slabs
        return [
            *(x.new_empty(x.shape) for x in per_token),
            xi.new_zeros(xi.shape),
            alpha.new_zeros(alpha.shape),
        ]

    def put_grads(self, n0: int, n1: int, C: int, slab: list[Tensor], grads: list[Tensor]):
        """The gradients to the slab's r, k̃, v, a, b, log w, (s, B, H, C, ·) each, as
        gradients to r, k, v, z, ξ and α, into grads (ξ's and α's summed)."""
        dr, d_key, dv, da, db, d_log_w = slab
        k, sig_w, log_w, rate, kappa, norm, bounded, boost = self.formed
        _, _, _, _, xi, alpha = self.tensors
        xi, alpha = xi[:, None], alpha[:, None]
        g_r, g_k, g_v, g_z, g_xi, g_alpha = grads
        D = k.size(-1)
        chunk_view(g_r, n0, n1, C).copy_(dr)
        chunk_view(g_v, n0, n1, C).copy_(dv)
        d_kappa = (db * rate).sub_(da)
        key_by_k = d_key * k  # dk̃ ⊙ k
        g_alpha += (key_by_k * (rate - 1)).sum((0, 1, 3))
        d_rate = (key_by_k.mul_(alpha)).addcmul_(db, kappa)
        along = (kappa * d_kappa).sum(-1, keepdim=True).masked_fill_(bounded, 0.0)
        d_k_xi = d_kappa.addcmul_(kappa, along, value=-1).div_(norm)  # d(k ⊙ ξ)
        g_xi += (d_k_xi * k).sum((0, 1, 3))
        dk = d_key.mul_(boost).addcmul_(d_k_xi, xi)
        chunk_view(g_k, n0, n1, C).copy_(dk)
        g_z = chunk_view(g_z, n0, n1, C)
        torch.mul(d_log_w * log_w, 1 - sig_w, out=g_z[..., :D])
        torch.mul(d_rate.mul_(rate), 1 - rate, out=g_z[..., D:])
