"""DeltaNet's delta rule: β is a write strength; UnitFeatures (φ on the way into the chunk-major
layout) and the layer's core on raw q, k against the recurrence written out, gradients
included; negative eigenvalues (β in (1, 2)) still follow the recurrence. The forms' agreement
with the recurrence for every kind of decay, the layer's decoding and allow_neg_eigval across
the family: test_delta_rule_family.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import ATTENTION_SHAPE as SHAPE
from helpers import DELTA_RULE_SIZES, delta_rule_inputs, delta_rule_recurrence, small_attention

from attn_lightning.attention.delta_rule import (
    DeltaRuleState,
    UnitFeatures,
    chunked_delta_rule,
    recurrent_delta_rule,
)
from attn_lightning.attention.deltanet import DeltaNet
from attn_lightning.errors import ConfigError

B, H, DK, DV = DELTA_RULE_SIZES


def test_beta_is_a_write_strength_in_zero_one() -> None:
    torch.manual_seed(0)
    attn = small_attention("deltanet")(**SHAPE)
    g = attn.gates(3 * torch.randn(2, 32, SHAPE["n_embd"]))
    assert g.shape == (2, SHAPE["n_head"], 32, 1)
    assert (g > 0).all() and (g < 1).all()
    assert g.std() > 0  # data-dependent: it varies with the token


@pytest.mark.parametrize("silu", [True, False])
def test_unit_features_are_normalised_silu_in_chunk_major_order(silu: bool) -> None:
    """UnitFeatures' hand-written backward and its chunk-major output against autograd on
    F.normalize(SiLU(x)), with rows at and below the eps bound (there |s| is the constant eps:
    no gradient through the norm)."""
    eps = 1e-6
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)  # (R, N, C, D)
    x[0, 1, 2] = 0.0  # φ(0) = 0: the padding stays zero
    x[2, 3, 0] *= 1e-8  # |s| < eps: bounded, yet φ(x) != 0
    x.requires_grad_()
    weight = torch.randn(4, 3, 5, 6, generator=g, dtype=torch.float64)
    got = UnitFeatures.apply(x, silu, eps)
    expected = F.normalize(F.silu(x) if silu else x, dim=-1, eps=eps).transpose(0, 1)
    assert got.is_contiguous() and got.shape == (4, 3, 5, 6)
    torch.testing.assert_close(got, expected)
    assert got[0, 2, 3].abs().max() > 0.01  # the bounded row is not zero
    (grad,) = torch.autograd.grad((got * weight).sum(), x)
    (expected_grad,) = torch.autograd.grad((expected * weight).sum(), x)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("decay", [False, True])
def test_layer_core_on_raw_q_k_equals_the_paper(decay: bool) -> None:
    """`attend` on raw q, k (φ applied on the way into the chunk-major layout, 37 positions:
    the last chunk padded) equals the paper's recurrence on φ(q), φ(k), gradients included."""
    g = torch.Generator().manual_seed(1)
    raw = [torch.randn(B, H, 37, D, generator=g, dtype=torch.float64) for D in (DK, DK, DV)]
    beta = torch.rand(B, H, 37, generator=g, dtype=torch.float64)
    log_alpha = -torch.rand(B, H, 37, generator=g, dtype=torch.float64)
    gates = torch.stack((beta, log_alpha), -1) if decay else beta[..., None]
    leaves = [x.requires_grad_() for x in (*raw, gates)]
    attn = DeltaNet(**SHAPE, chunk_size=8)
    got = attn.attend(*leaves)
    q, k = (F.normalize(F.silu(x), dim=-1) for x in leaves[:2])
    v, beta = leaves[2], leaves[3][..., 0]
    expected, _ = delta_rule_recurrence(q, k, v, beta, leaves[3][..., 1] if decay else None)
    torch.testing.assert_close(got, expected)
    weight = torch.randn(B, H, 37, DV, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((got * weight).sum(), leaves)
    expected_grads = torch.autograd.grad((expected * weight).sum(), leaves)
    for name, a, e in zip(["q", "k", "v", "gates"], grads, expected_grads, strict=True):
        torch.testing.assert_close(a, e, msg=lambda m, name=name: f"{name}: {m}")


def test_negative_eigenvalues_chunked_and_recurrent_equal_the_paper() -> None:
    """β in (1, 2): the transition I - β k k^T flips the state's component along k; the chunked
    and recurrent forms still follow the paper's recurrence, and a reflection (β = 2) applied
    twice with the same key and no value restores the state."""
    q, k, v, beta, _ = delta_rule_inputs(37, "none")
    beta = 1 + beta  # (1, 2)
    expected, S = delta_rule_recurrence(q, k, v, beta)
    state = DeltaRuleState()
    torch.testing.assert_close(chunked_delta_rule(q, k, v, beta, None, 8, state), expected)
    torch.testing.assert_close(
        recurrent_delta_rule(q, k, v, beta, None, DeltaRuleState()), expected
    )
    torch.testing.assert_close(state.S, S)
    k[:, :, 21], v[:, :, 20:22], beta[:, :, 20:22] = k[:, :, 20], 0.0, 2.0
    q[:, :, 20:22] = q[:, :, 19, None]  # read the state before, between and after
    out = chunked_delta_rule(q, k, v, beta, None, 8)
    torch.testing.assert_close(out[:, :, 21], out[:, :, 19])  # (I - 2 k k^T)^2 = I
    assert not torch.allclose(out[:, :, 20], out[:, :, 19])  # one reflection moved it


def test_allow_neg_eigval_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match=r"attention\.allow_neg_eigval"):
        small_attention("deltanet", allow_neg_eigval="yes")(**SHAPE)
