"""Gated DeltaProduct: n_h gated delta-rule steps per token. The layer's core (the sub-steps
run through the chunked delta rule) equals the paper's recurrence written out here per token
(float64), at lengths that are and are not multiples of the chunk, gradients included; agrees
with fla's naive_recurrent_gated_delta_product (loaded by path, skipped without fla) in float64
and float32; n_h = 1 is Gated DeltaNet. The layer's decoding and its contract with negative
eigenvalues: test_delta_rule_family.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import ATTENTION_SHAPE as SHAPE
from helpers import fla_naive_in, small_attention
from torch import Tensor

from attn_lightning.attention.gated_deltanet import GatedDeltaNet
from attn_lightning.attention.gated_deltaproduct import GatedDeltaProduct
from attn_lightning.errors import ConfigError

B, H, D = 2, 3, 4


def inputs(T: int, n_h: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Raw q (B, H, T, D), k and v of the sub-steps (B, H, T, n_h, D), gates [β_1 .. β_n_h,
    log α] (B, H, T, n_h + 1) with β in (0, 1), log α in (-1, 0); float64."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, H, T, n_h, D, generator=g, dtype=torch.float64) for _ in range(2))
    beta = torch.rand(B, H, T, n_h, generator=g, dtype=torch.float64)
    log_alpha = -torch.rand(B, H, T, 1, generator=g, dtype=torch.float64)
    return q, k, v, torch.cat((beta, log_alpha), -1)


def unit(x: Tensor) -> Tensor:
    return F.normalize(F.silu(x), dim=-1)  # φ, as the delta-rule layers apply it


def paper_recurrence(q: Tensor, k: Tensor, v: Tensor, gates: Tensor) -> Tensor:
    """Per token t: S <- α_t S, then for j = 1 .. n_h S <- (I - β k k^T) S + β k v^T with the
    sub-step's unit key k_{t,j}, value v_{t,j} and β_{t,j}; o_t = S^T q_t (S: D x D)."""
    q, k = unit(q), unit(k)
    n_h = k.size(3)
    S = q.new_zeros(B, H, D, D)
    eye = torch.eye(D, dtype=q.dtype)
    outputs = []
    for t in range(q.size(2)):
        S = gates[:, :, t, -1, None, None].exp() * S
        for j in range(n_h):
            k_j, v_j = k[:, :, t, j, :, None], v[:, :, t, j, :, None]
            b_j = gates[:, :, t, j, None, None]
            S = (eye - b_j * k_j @ k_j.mT) @ S + b_j * k_j @ v_j.mT
        outputs.append(S.mT @ q[:, :, t, :, None])
    return torch.cat(outputs, dim=-1).mT  # (B, H, T, D)


def core(n_h: int, chunk_size: int, **options: Any) -> GatedDeltaProduct:
    return GatedDeltaProduct(
        n_embd=H * D, n_head=H, block_size=64, num_householder=n_h, chunk_size=chunk_size, **options
    )


def substeps(x: Tensor) -> Tensor:
    """(B, H, T, n_h, D) -> the core's (B, H, n_h T, D), sub-steps in order (t, j)."""
    return x.flatten(2, 3)


@pytest.mark.parametrize("n_h", [1, 2, 3])
@pytest.mark.parametrize("T", [16, 37])  # 37: the sub-steps' last chunk padded
@pytest.mark.parametrize("chunk_size", [1, 8, 64])
def test_core_equals_the_paper(n_h: int, T: int, chunk_size: int) -> None:
    q, k, v, gates = inputs(T, n_h)
    got = core(n_h, chunk_size).attend(q, substeps(k), substeps(v), gates)
    torch.testing.assert_close(got, paper_recurrence(q, k, v, gates))


def test_core_gradients_equal_the_papers() -> None:
    leaves = [x.requires_grad_() for x in inputs(21, 2)]
    weight = torch.randn(B, H, 21, D, dtype=torch.float64)
    got = core(2, 8).attend(leaves[0], substeps(leaves[1]), substeps(leaves[2]), leaves[3])
    grads = torch.autograd.grad((got * weight).sum(), leaves)
    expected = torch.autograd.grad((paper_recurrence(*leaves) * weight).sum(), leaves)
    for name, a, e in zip(["q", "k", "v", "gates"], grads, expected, strict=True):
        torch.testing.assert_close(a, e, msg=lambda m, name=name: f"{name}: {m}")


def test_a_tokens_substeps_see_no_later_token() -> None:
    """Changing token 9's keys, values and gates leaves the outputs before 9 exactly as they
    were, and changes token 9's: its own sub-steps reach its output."""
    q, k, v, gates = inputs(21, 2)
    attn = core(2, 8)
    before = attn.attend(q, substeps(k), substeps(v), gates)
    k[:, :, 9], v[:, :, 9], gates[:, :, 9] = -k[:, :, 9], 2 * v[:, :, 9], gates[:, :, 9] / 2
    after = attn.attend(q, substeps(k), substeps(v), gates)
    assert torch.equal(after[:, :, :9], before[:, :, :9])
    assert not torch.allclose(after[:, :, 9], before[:, :, 9])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n_h", [2, 3])
def test_agrees_with_fla(dtype: torch.dtype, n_h: int) -> None:
    """fla takes q (B, T, H, D), the sub-steps' k, v (B, n_h T, H, D) and β (B, n_h T, H), the
    decay g = log α (B, T, H); scale 1 (we do not scale q): max |ours - fla| / max |fla|."""
    q, k, v, gates = (x.to(dtype) for x in inputs(37, n_h, seed=4))
    ours = core(n_h, 16).attend(q, substeps(k), substeps(v), gates)
    tb = lambda x: x.transpose(1, 2)  # noqa: E731  (B, H, T, ...) -> (B, T, H, ...)
    fla_q, fla_k = tb(unit(q)), tb(substeps(unit(k)))
    fla_v, fla_g, fla_beta = tb(substeps(v)), tb(gates[..., -1]), tb(gates[..., :-1].flatten(2))
    with fla_naive_in("gated_delta_product", dtype) as fla_gdp:
        theirs, _ = fla_gdp.naive_recurrent_gated_delta_product(
            fla_q, fla_k, fla_v, fla_g, fla_beta, scale=1.0, num_householder=n_h
        )
    theirs = tb(theirs)
    assert theirs.dtype == dtype
    error = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    assert error < tolerance, f"max |ours - fla| / max |fla| = {error:.2e}"


def test_one_householder_step_is_gated_deltanet() -> None:
    """n_h = 1, the same weights (the same parameter names and shapes): Gated DeltaNet."""
    torch.manual_seed(0)
    product = small_attention("gated_deltaproduct", num_householder=1)(**SHAPE).eval()
    gated = GatedDeltaNet(**SHAPE, chunk_size=8).eval()
    gated.load_state_dict(product.state_dict())
    x = torch.randn(2, 29, SHAPE["n_embd"])
    torch.testing.assert_close(product(x)[0], gated(x)[0])
    torch.testing.assert_close(product(x, return_attn=True)[1], gated(x, return_attn=True)[1])


def test_parameters_are_n_h_keys_values_and_betas() -> None:
    """Over Gated DeltaNet: (n_h - 1) more k and v projections and β's per token."""
    C, n_h = SHAPE["n_embd"], 3
    product = small_attention("gated_deltaproduct", num_householder=n_h)(**SHAPE)
    gated = GatedDeltaNet(**SHAPE)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(product) - count(gated) == (n_h - 1) * (2 * C * C + SHAPE["n_head"] * C)


def test_the_matrix_shown_sums_each_tokens_substeps() -> None:
    """return_attn: the output is the (T, n_h T) sub-step matrix on the sub-steps' values (the
    fast path's), and the (T, T) weights shown are its sums per token: what the output would
    take of each token if its n_h values were one."""
    torch.manual_seed(0)
    attn = small_attention("gated_deltaproduct")(**SHAPE).eval()
    x = torch.randn(2, 21, SHAPE["n_embd"])
    shown, att = attn(x, return_attn=True)
    torch.testing.assert_close(shown, attn(x)[0])
    assert att.shape == (2, SHAPE["n_head"], 21, 21) and att.triu(1).abs().max() == 0
    q, k, v, gates = inputs(21, 2)
    v[:, :, :, 1] = v[:, :, :, 0]  # one value per token
    out = attn.attend(q, substeps(k), substeps(v), gates)
    torch.testing.assert_close(attn.attention_matrix(q, substeps(k), gates) @ v[:, :, :, 0], out)


def test_gates_are_in_range() -> None:
    torch.manual_seed(0)
    attn = small_attention("gated_deltaproduct", num_householder=3)(**SHAPE)
    g = attn.gates(3 * torch.randn(2, 32, SHAPE["n_embd"]))
    assert g.shape == (2, SHAPE["n_head"], 32, 4)
    beta, alpha = g[..., :3], g[..., 3].exp()
    assert (beta > 0).all() and (beta < 1).all() and beta.std() > 0
    assert (alpha > 0).all() and (alpha <= 1).all() and alpha.std() > 0
    negative = small_attention("gated_deltaproduct", allow_neg_eigval=True)(**SHAPE)
    assert (negative.gates(3 * torch.randn(2, 32, SHAPE["n_embd"]))[..., :2] > 1).any()


@pytest.mark.parametrize("value", [0, 1.5, True])
def test_num_householder_must_be_a_positive_integer(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"attention\.num_householder"):
        small_attention("gated_deltaproduct", num_householder=value)(**SHAPE)
