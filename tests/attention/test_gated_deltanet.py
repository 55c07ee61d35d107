"""Gated DeltaNet's decay per head and token: no decay is DeltaNet, α -> 0 forgets the past,
the decay's edge cases (α near 1, near 0) stay finite, outputs and gradients, in every form
and in the layer; the chunked form's query stride (Gated DeltaProduct's sub-steps) and its
refusal of a carried state that wants a gradient. The forms' agreement with the recurrence
written out, for every kind of decay: test_delta_rule_family.py."""

from __future__ import annotations

import pytest
import torch
from helpers import ATTENTION_SHAPE as SHAPE
from helpers import DELTA_RULE_SIZES, delta_rule_inputs, delta_rule_recurrence

from attn_lightning.attention.delta_rule import (
    DeltaRuleState,
    chunked_delta_rule,
    delta_rule_matrix,
    recurrent_delta_rule,
)
from attn_lightning.attention.gated_deltanet import GatedDeltaNet

B, H, DK, DV = DELTA_RULE_SIZES


def test_no_decay_is_deltanet() -> None:
    q, k, v, beta, log_alpha = delta_rule_inputs(21, "scalar")
    plain = chunked_delta_rule(q, k, v, beta, None, 8)
    torch.testing.assert_close(chunked_delta_rule(q, k, v, beta, torch.zeros_like(beta), 8), plain)
    assert not torch.allclose(chunked_delta_rule(q, k, v, beta, log_alpha, 8), plain)


def test_alpha_zero_forgets_the_past() -> None:
    """α_t -> 0 wipes S_{t-1}: from t on, the outputs are those of the sequence started at t."""
    q, k, v, beta, log_alpha = delta_rule_inputs(37, "scalar")
    log_alpha[:, :, 13] = -200.0  # α = e^-200
    whole = chunked_delta_rule(q, k, v, beta, log_alpha, 8)
    alone = chunked_delta_rule(*(x[:, :, 13:] for x in (q, k, v, beta, log_alpha)), 8)
    torch.testing.assert_close(whole[:, :, 13:], alone)
    assert not torch.allclose(whole[:, :, 12], alone[:, :, 0])


@pytest.mark.parametrize("log_alpha_value", [-1e-7, -0.5, -30.0, -1e4])  # α near 1 ... near 0
@pytest.mark.parametrize("form", ["chunked", "recurrent", "matrix"])
def test_extreme_decays_stay_finite(log_alpha_value: float, form: str) -> None:
    """Outputs and gradients finite in float32, and the forms still agree with float64."""
    q, k, v, beta, _ = (x.float() for x in delta_rule_inputs(37, "scalar"))
    log_alpha = torch.full_like(beta, log_alpha_value)
    log_alpha[:, :, ::5] *= 0.5  # not constant: differences of cumulative sums matter
    leaves = [x.requires_grad_() for x in (q, k, v, beta, log_alpha)]
    if form == "chunked":
        out = chunked_delta_rule(*leaves, 8)
    elif form == "recurrent":
        out = recurrent_delta_rule(*leaves, DeltaRuleState())
    else:
        out = delta_rule_matrix(q, k, beta, log_alpha) @ v
    out.square().sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(x.grad).all() for x in leaves if x.grad is not None)
    expected, _ = delta_rule_recurrence(*(x.detach().double() for x in leaves))
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)


def test_gates_are_in_range_and_data_dependent() -> None:
    """β in (0, 1), α = exp(log α) in (0, 1], per head and token, from x."""
    torch.manual_seed(0)
    attn = GatedDeltaNet(**SHAPE, chunk_size=8)
    g = attn.gates(3 * torch.randn(2, 32, SHAPE["n_embd"]))
    assert g.shape == (2, SHAPE["n_head"], 32, 2)
    beta, alpha = g[..., 0], g[..., 1].exp()
    assert (beta > 0).all() and (beta < 1).all() and beta.std() > 0
    assert (alpha > 0).all() and (alpha <= 1).all() and alpha.std() > 0
    assert attn.A_log.shape == attn.dt_bias.shape == (SHAPE["n_head"],)


@pytest.mark.parametrize(("A_log", "dt_bias"), [(-20.0, -20.0), (8.0, 20.0)])  # α ~ 1, α ~ 0
def test_layer_with_extreme_decay_is_finite(A_log: float, dt_bias: float) -> None:
    torch.manual_seed(0)
    attn = GatedDeltaNet(**SHAPE, chunk_size=8)
    with torch.no_grad():
        attn.A_log.fill_(A_log)
        attn.dt_bias.fill_(dt_bias)
    x = torch.randn(2, 29, SHAPE["n_embd"], requires_grad=True)
    y, _ = attn(x)
    y.square().sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters() if p.grad is not None)


def test_a_carried_state_that_wants_a_gradient_is_refused() -> None:
    """The chunked form gives the entering state no gradient: silently dropping one would be
    a wrong gradient, so it is an error."""
    q, k, v, beta, log_alpha = delta_rule_inputs(8, "scalar")
    state = DeltaRuleState()
    state.S = torch.zeros(B, H, DK, DV, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="carried state gets no gradient"):
        chunked_delta_rule(q, k, v, beta, log_alpha, 4, state)


@pytest.mark.parametrize("decay", [True, False])
@pytest.mark.parametrize("stride", [2, 3])  # chunks of 8 and 6 positions, the last one padded
def test_query_stride_reads_every_sth_position(decay: bool, stride: int) -> None:
    """With query_stride s the chunked form takes only the queries of positions s - 1,
    2 s - 1, .. and gives the paper's outputs there, gradients and final state included."""
    T = 11 * stride
    tensors = [x.requires_grad_() for x in delta_rule_inputs(T, "scalar")]
    q, k, v, beta, log_alpha = tensors
    log_alpha = log_alpha if decay else torch.zeros_like(log_alpha)
    weight = torch.randn(B, H, 11, DV, dtype=torch.float64)
    paper, S = delta_rule_recurrence(q, k, v, beta, log_alpha)
    expected = paper[:, :, stride - 1 :: stride]
    state = DeltaRuleState()
    got = chunked_delta_rule(
        q[:, :, stride - 1 :: stride],
        k,
        v,
        beta,
        log_alpha if decay else None,
        8,
        state,
        query_stride=stride,
    )
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(state.S, S)
    got_grads = torch.autograd.grad((got * weight).sum(), tensors, allow_unused=True)
    expected_grads = torch.autograd.grad((expected * weight).sum(), tensors, allow_unused=True)
    names = ["q", "k", "v", "beta", "log_alpha"]
    for name, g, e in zip(names, got_grads, expected_grads, strict=True):
        if e is None:  # log α unused without decay
            assert g is None, name
            continue
        torch.testing.assert_close(g, e, msg=lambda m, name=name: f"{name}: {m}")


def test_query_stride_needs_whole_strides_and_a_decay_per_token() -> None:
    q, k, v, beta, log_alpha = delta_rule_inputs(9, "scalar")
    with pytest.raises(ValueError, match="query_stride"):
        chunked_delta_rule(q[:, :, 1::2], k, v, beta, log_alpha, 8, query_stride=2)
    per_channel = log_alpha[..., None].expand(B, H, 9, DK)
    with pytest.raises(ValueError, match="query_stride"):
        chunked_delta_rule(q[:, :, 2::3], k, v, beta, per_channel, 8, query_stride=3)
