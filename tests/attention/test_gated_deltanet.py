"""Gated DeltaNet's gated delta rule: chunked == recurrent == the paper's recurrence written
out (float64), at lengths that are and are not multiples of the chunk size, with and without a
carried state; the decay's edge cases (α near 1, near 0) stay finite, outputs and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import ATTENTION_SHAPE as SHAPE
from torch import Tensor

from attn_lightning.attention.delta_rule import (
    DeltaRuleState,
    chunked_delta_rule,
    delta_rule_matrix,
    recurrent_delta_rule,
)
from attn_lightning.attention.gated_deltanet import GatedDeltaNet

B, H, DK, DV = 2, 3, 5, 4


def inputs(T: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Unit q, k (B, H, T, DK), v (B, H, T, DV), β in (0, 1) and log α in (-1, 0)
    (B, H, T); float64."""
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, H, T, DK, generator=g, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(B, H, T, DK, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(B, H, T, DV, generator=g, dtype=torch.float64)
    beta = torch.rand(B, H, T, generator=g, dtype=torch.float64)
    log_alpha = -torch.rand(B, H, T, generator=g, dtype=torch.float64)
    return q, k, v, beta, log_alpha


def paper_recurrence(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_alpha: Tensor, S: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """S_t = α_t S_{t-1} (I - β_t k_t k_t^T) + β_t v_t k_t^T, o_t = S_t q_t, with S (DV x DK)
    as in Yang, Kautz & Hatamizadeh 2025; returns the outputs and the final S."""
    S = q.new_zeros(B, H, DV, DK) if S is None else S
    eye = torch.eye(DK, dtype=q.dtype)
    outputs = []
    for t in range(q.size(2)):
        k_t, v_t, b_t = k[:, :, t, :, None], v[:, :, t, :, None], beta[:, :, t, None, None]
        a_t = log_alpha[:, :, t, None, None].exp()
        S = a_t * S @ (eye - b_t * k_t @ k_t.mT) + b_t * v_t @ k_t.mT
        outputs.append(S @ q[:, :, t, :, None])
    return torch.cat(outputs, dim=-1).mT, S  # (B, H, T, DV), (B, H, DV, DK)


@pytest.mark.parametrize("T", [16, 37])  # a multiple of the chunk size 8, and not
@pytest.mark.parametrize("chunk_size", [1, 8, 64])
def test_chunked_and_recurrent_equal_the_paper(T: int, chunk_size: int) -> None:
    q, k, v, beta, log_alpha = inputs(T)
    expected, S = paper_recurrence(q, k, v, beta, log_alpha)
    chunk_state, step_state = DeltaRuleState(), DeltaRuleState()
    chunked = chunked_delta_rule(q, k, v, beta, log_alpha, chunk_size, chunk_state)
    torch.testing.assert_close(chunked, expected)
    torch.testing.assert_close(recurrent_delta_rule(q, k, v, beta, log_alpha, step_state), expected)
    torch.testing.assert_close(chunk_state.S, S.mT)  # our state is the paper's S transposed
    torch.testing.assert_close(step_state.S, S.mT)


@pytest.mark.parametrize("decay", [True, False])
@pytest.mark.parametrize("chunk_size", [4, 8])  # 37 positions: the last chunk padded
def test_chunked_gradients_equal_the_papers(decay: bool, chunk_size: int) -> None:
    """Gradients of q, k, v, β and log α through the chunked form (its triangular solve given
    the unmasked products) equal those through the paper's recurrence."""
    tensors = [x.requires_grad_() for x in inputs(37)]
    log_alpha = tensors[4] if decay else torch.zeros_like(tensors[4])
    weight = torch.randn(B, H, 37, DV, dtype=torch.float64)
    expected = torch.autograd.grad(
        (paper_recurrence(*tensors[:4], log_alpha)[0] * weight).sum(), tensors, allow_unused=True
    )
    chunked = chunked_delta_rule(*tensors[:4], log_alpha if decay else None, chunk_size)
    got = torch.autograd.grad((chunked * weight).sum(), tensors, allow_unused=True)
    for name, g, e in zip(["q", "k", "v", "beta", "log_alpha"], got, expected, strict=True):
        if e is None:  # log α unused without decay
            assert g is None, name
            continue
        torch.testing.assert_close(g, e, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("split", [8, 13])
def test_continues_from_a_carried_state(split: int) -> None:
    """Prefill `split` tokens (chunked), then continue chunked or token by token."""
    q, k, v, beta, log_alpha = inputs(37)
    expected, _ = paper_recurrence(q, k, v, beta, log_alpha)
    head = [x[:, :, :split] for x in (q, k, v, beta, log_alpha)]
    rest = [x[:, :, split:] for x in (q, k, v, beta, log_alpha)]
    _, S_split = paper_recurrence(*head)
    for continue_chunked in (True, False):
        state = DeltaRuleState()
        first = chunked_delta_rule(*head, 8, state)
        torch.testing.assert_close(state.S, S_split.mT)
        if continue_chunked:
            second = chunked_delta_rule(*rest, 8, state)
        else:
            second = recurrent_delta_rule(*rest, state)
        torch.testing.assert_close(torch.cat((first, second), dim=2), expected)
        assert state.length == 37


@pytest.mark.parametrize("T", [16, 21])
def test_matrix_applied_to_v_is_the_fast_path(T: int) -> None:
    q, k, v, beta, log_alpha = inputs(T)
    matrix = delta_rule_matrix(q, k, beta, log_alpha)
    assert matrix.shape == (B, H, T, T) and matrix.triu(1).abs().max() == 0
    torch.testing.assert_close(matrix @ v, chunked_delta_rule(q, k, v, beta, log_alpha, 8))
    assert not torch.allclose(matrix, delta_rule_matrix(q, k, beta))  # the decay is in it


def test_no_decay_is_deltanet() -> None:
    q, k, v, beta, log_alpha = inputs(21)
    plain = chunked_delta_rule(q, k, v, beta, None, 8)
    torch.testing.assert_close(chunked_delta_rule(q, k, v, beta, torch.zeros_like(beta), 8), plain)
    assert not torch.allclose(chunked_delta_rule(q, k, v, beta, log_alpha, 8), plain)


def test_a_repeated_key_with_beta_one_is_overwritten() -> None:
    """β = 1: S_t k_t = α_t S_{t-1}(k_t - k_t) + v_t = v_t, whatever the decay."""
    q, k, v, beta, log_alpha = inputs(21)
    k[:, :, 15], beta[:, :, 15], q[:, :, 15] = k[:, :, 4], 1.0, k[:, :, 4]
    for out in (
        chunked_delta_rule(q, k, v, beta, log_alpha, 8),
        recurrent_delta_rule(q, k, v, beta, log_alpha, DeltaRuleState()),
    ):
        torch.testing.assert_close(out[:, :, 15], v[:, :, 15])


def test_alpha_zero_forgets_the_past() -> None:
    """α_t -> 0 wipes S_{t-1}: from t on, the outputs are those of the sequence started at t."""
    q, k, v, beta, log_alpha = inputs(37)
    log_alpha[:, :, 13] = -200.0  # α = e^-200
    whole = chunked_delta_rule(q, k, v, beta, log_alpha, 8)
    alone = chunked_delta_rule(*(x[:, :, 13:] for x in (q, k, v, beta, log_alpha)), 8)
    torch.testing.assert_close(whole[:, :, 13:], alone)
    assert not torch.allclose(whole[:, :, 12], alone[:, :, 0])


@pytest.mark.parametrize("log_alpha_value", [-1e-7, -0.5, -30.0, -1e4])  # α near 1 ... near 0
@pytest.mark.parametrize("form", ["chunked", "recurrent", "matrix"])
def test_extreme_decays_stay_finite(log_alpha_value: float, form: str) -> None:
    """Outputs and gradients finite in float32, and the forms still agree with float64."""
    q, k, v, beta, _ = (x.float() for x in inputs(37))
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
    expected, _ = paper_recurrence(*(x.detach().double() for x in leaves))
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


def test_layer_decodes_what_it_computes() -> None:
    """Chunked training path == prefill + token-by-token decoding with an O(1) state."""
    torch.manual_seed(0)
    attn = GatedDeltaNet(**SHAPE, chunk_size=8, n_kv_head=2).eval()
    x = torch.randn(2, 29, SHAPE["n_embd"])
    parallel, _ = attn(x)
    cache = attn.new_cache()
    steps = [attn(x[:, :11], cache=cache)[0]]
    steps += [attn(x[:, t : t + 1], cache=cache)[0] for t in range(11, 29)]
    torch.testing.assert_close(torch.cat(steps, 1), parallel)
    assert cache.S.shape == (2, SHAPE["n_head"], 8, 8) and cache.length == 29


def test_a_carried_state_that_wants_a_gradient_is_refused() -> None:
    """The chunked form gives the entering state no gradient: silently dropping one would be
    a wrong gradient, so it is an error."""
    q, k, v, beta, log_alpha = inputs(8)
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
    tensors = [x.requires_grad_() for x in inputs(T)]
    q, k, v, beta, log_alpha = tensors
    log_alpha = log_alpha if decay else torch.zeros_like(log_alpha)
    weight = torch.randn(B, H, 11, DV, dtype=torch.float64)
    paper, S = paper_recurrence(q, k, v, beta, log_alpha)
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
    torch.testing.assert_close(state.S, S.mT)
    got_grads = torch.autograd.grad((got * weight).sum(), tensors, allow_unused=True)
    expected_grads = torch.autograd.grad((expected * weight).sum(), tensors, allow_unused=True)
    names = ["q", "k", "v", "beta", "log_alpha"]
    for name, g, e in zip(names, got_grads, expected_grads, strict=True):
        if e is None:  # log α unused without decay
            assert g is None, name
            continue
        torch.testing.assert_close(g, e, msg=lambda m, name=name: f"{name}: {m}")


def test_query_stride_needs_whole_strides_and_a_decay_per_token() -> None:
    q, k, v, beta, log_alpha = inputs(9)
    with pytest.raises(ValueError, match="query_stride"):
        chunked_delta_rule(q[:, :, 1::2], k, v, beta, log_alpha, 8, query_stride=2)
    per_channel = log_alpha[..., None].expand(B, H, 9, DK)
    with pytest.raises(ValueError, match="query_stride"):
        chunked_delta_rule(q[:, :, 2::3], k, v, beta, per_channel, 8, query_stride=3)
