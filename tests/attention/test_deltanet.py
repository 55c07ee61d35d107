"""DeltaNet's delta rule: the chunked (UT transform) form, the recurrent form and the
materialised matrix equal the paper's recurrence written out step by step, in float64, at
lengths that are and are not multiples of the chunk size, from zero and from a carried state."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import ATTENTION_SHAPE as SHAPE
from helpers import small_attention
from torch import Tensor

from attn_lightning.analysis.contract import ContractSizes, run_contract
from attn_lightning.attention.delta_rule import (
    DeltaRuleState,
    UnitFeatures,
    chunked_delta_rule,
    delta_rule_matrix,
    recurrent_delta_rule,
)
from attn_lightning.attention.deltanet import DeltaNet
from attn_lightning.errors import ConfigError

B, H, DK, DV = 2, 3, 5, 4
CONTRACT_SIZES = ContractSizes(
    n_embd=SHAPE["n_embd"], n_head=SHAPE["n_head"], length=SHAPE["block_size"]
)


def inputs(T: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Unit q, k (B, H, T, DK), v (B, H, T, DV), β (B, H, T) in (0, 1); float64."""
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, H, T, DK, generator=g, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(B, H, T, DK, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(B, H, T, DV, generator=g, dtype=torch.float64)
    beta = torch.rand(B, H, T, generator=g, dtype=torch.float64)
    return q, k, v, beta


def paper_recurrence(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, S: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """S_t = S_{t-1} (I - β_t k_t k_t^T) + β_t v_t k_t^T, o_t = S_t q_t, with S (DV x DK) as
    in Schlag et al. 2021; returns the outputs and the final S."""
    S = q.new_zeros(B, H, DV, DK) if S is None else S
    eye = torch.eye(DK, dtype=q.dtype)
    outputs = []
    for t in range(q.size(2)):
        k_t, v_t, b_t = k[:, :, t, :, None], v[:, :, t, :, None], beta[:, :, t, None, None]
        S = S @ (eye - b_t * k_t @ k_t.mT) + b_t * v_t @ k_t.mT
        outputs.append(S @ q[:, :, t, :, None])
    return torch.cat(outputs, dim=-1).mT, S  # (B, H, T, DV), (B, H, DV, DK)


@pytest.mark.parametrize("T", [16, 37])  # a multiple of the chunk size 8, and not
@pytest.mark.parametrize("chunk_size", [1, 8, 64])
def test_chunked_and_recurrent_equal_the_paper(T: int, chunk_size: int) -> None:
    q, k, v, beta = inputs(T)
    expected, S = paper_recurrence(q, k, v, beta)
    chunk_state, step_state = DeltaRuleState(), DeltaRuleState()
    torch.testing.assert_close(
        chunked_delta_rule(q, k, v, beta, None, chunk_size, chunk_state), expected
    )
    torch.testing.assert_close(recurrent_delta_rule(q, k, v, beta, None, step_state), expected)
    torch.testing.assert_close(chunk_state.S, S.mT)  # our state is the paper's S transposed
    torch.testing.assert_close(step_state.S, S.mT)
    assert chunk_state.length == step_state.length == T


@pytest.mark.parametrize("split", [8, 13])
def test_continues_from_a_carried_state(split: int) -> None:
    """Prefill `split` tokens (chunked), then continue chunked or token by token."""
    q, k, v, beta = inputs(37)
    expected, _ = paper_recurrence(q, k, v, beta)
    _, S_split = paper_recurrence(
        q[:, :, :split], k[:, :, :split], v[:, :, :split], beta[:, :, :split]
    )
    rest = [x[:, :, split:] for x in (q, k, v, beta)]
    for continue_chunked in (True, False):
        state = DeltaRuleState()
        first = chunked_delta_rule(
            q[:, :, :split], k[:, :, :split], v[:, :, :split], beta[:, :, :split], None, 8, state
        )
        torch.testing.assert_close(state.S, S_split.mT)
        if continue_chunked:
            second = chunked_delta_rule(*rest[:3], rest[3], None, 8, state)
        else:
            second = recurrent_delta_rule(*rest[:3], rest[3], None, state)
        torch.testing.assert_close(torch.cat((first, second), dim=2), expected)
        assert state.length == 37


@pytest.mark.parametrize("T", [16, 21])
def test_matrix_applied_to_v_is_the_fast_path(T: int) -> None:
    q, k, v, beta = inputs(T)
    matrix = delta_rule_matrix(q, k, beta)
    assert matrix.shape == (B, H, T, T) and matrix.triu(1).abs().max() == 0
    torch.testing.assert_close(matrix @ v, chunked_delta_rule(q, k, v, beta, None, 8))


def test_a_repeated_key_with_beta_one_is_overwritten() -> None:
    """β = 1: S_t k_t = S_{t-1}(k_t - k_t) + v_t = v_t. Writing k again replaces its value:
    the state answers k with the newest v, whatever was stored before."""
    q, k, v, beta = inputs(21)
    k[:, :, 15] = k[:, :, 4]  # the key of position 4 again at 15 ...
    beta[:, :, 15] = 1.0  # ... written with full strength
    q[:, :, 15] = k[:, :, 15]  # and read back at once
    q[:, :, 20], beta[:, :, 16:] = k[:, :, 4], 0.0  # later writes with β = 0 change nothing
    for out in (
        chunked_delta_rule(q, k, v, beta, None, 8),
        recurrent_delta_rule(q, k, v, beta, None, DeltaRuleState()),
    ):
        torch.testing.assert_close(out[:, :, 15], v[:, :, 15])
        torch.testing.assert_close(out[:, :, 20], v[:, :, 15])
        assert not torch.allclose(out[:, :, 15], v[:, :, 4])  # the old value is gone


def test_beta_is_a_write_strength_in_zero_one() -> None:
    torch.manual_seed(0)
    attn = small_attention("deltanet")(**SHAPE)
    g = attn.gates(3 * torch.randn(2, 32, SHAPE["n_embd"]))
    assert g.shape == (2, SHAPE["n_head"], 32, 1)
    assert (g > 0).all() and (g < 1).all()
    assert g.std() > 0  # data-dependent: it varies with the token


@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_layer_decodes_what_it_computes(n_kv_head: int) -> None:
    """The layer's chunked training path equals prefill + token-by-token decoding (O(1) state),
    with grouped k/v heads too."""
    torch.manual_seed(0)
    attn = DeltaNet(**SHAPE, chunk_size=8, n_kv_head=n_kv_head).eval()
    x = torch.randn(2, 29, SHAPE["n_embd"])
    parallel, _ = attn(x)
    cache = attn.new_cache()
    steps = [attn(x[:, :11], cache=cache)[0]]  # prefill (chunked, with a state), then steps
    steps += [attn(x[:, t : t + 1], cache=cache)[0] for t in range(11, 29)]
    torch.testing.assert_close(torch.cat(steps, 1), parallel)
    assert cache.S.shape == (2, SHAPE["n_head"], 8, 8) and cache.length == 29


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
    if decay:  # the paper's gated recurrence: α_t scales the state before the update
        S, outputs = q.new_zeros(B, H, DV, DK), []
        for t in range(37):
            k_t, v_t, b_t = k[:, :, t, :, None], v[:, :, t, :, None], beta[:, :, t, None, None]
            S = leaves[3][:, :, t, 1, None, None].exp() * S
            S = S @ (torch.eye(DK, dtype=q.dtype) - b_t * k_t @ k_t.mT) + b_t * v_t @ k_t.mT
            outputs.append(S @ q[:, :, t, :, None])
        expected = torch.cat(outputs, dim=-1).mT
    else:
        expected, _ = paper_recurrence(q, k, v, beta)
    torch.testing.assert_close(got, expected)
    weight = torch.randn(B, H, 37, DV, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((got * weight).sum(), leaves)
    expected_grads = torch.autograd.grad((expected * weight).sum(), leaves)
    for name, a, e in zip(["q", "k", "v", "gates"], grads, expected_grads, strict=True):
        torch.testing.assert_close(a, e, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("variant", ["deltanet", "gated_deltanet"])
def test_allow_neg_eigval_doubles_the_write_strength(variant: str) -> None:
    """allow_neg_eigval: β = 2 σ(x W_β) in (0, 2) (Grazzi et al. 2025), the same weights giving
    twice the default's β; off by default."""
    torch.manual_seed(0)
    default = small_attention(variant)(**SHAPE)
    torch.manual_seed(0)
    negative = small_attention(variant, allow_neg_eigval=True)(**SHAPE)
    x = 3 * torch.randn(2, 32, SHAPE["n_embd"])
    beta, doubled = default.gates(x)[..., 0], negative.gates(x)[..., 0]
    assert not default.allow_neg_eigval
    torch.testing.assert_close(doubled, 2 * beta)
    assert (doubled > 0).all() and (doubled < 2).all() and (doubled > 1).any()


def test_negative_eigenvalues_chunked_and_recurrent_equal_the_paper() -> None:
    """β in (1, 2): the transition I - β k k^T flips the state's component along k; the chunked
    and recurrent forms still follow the paper's recurrence, and a reflection (β = 2) applied
    twice with the same key and no value restores the state."""
    q, k, v, beta = inputs(37)
    beta = 1 + beta  # (1, 2)
    expected, S = paper_recurrence(q, k, v, beta)
    state = DeltaRuleState()
    torch.testing.assert_close(chunked_delta_rule(q, k, v, beta, None, 8, state), expected)
    torch.testing.assert_close(
        recurrent_delta_rule(q, k, v, beta, None, DeltaRuleState()), expected
    )
    torch.testing.assert_close(state.S, S.mT)
    k[:, :, 21], v[:, :, 20:22], beta[:, :, 20:22] = k[:, :, 20], 0.0, 2.0
    q[:, :, 20:22] = q[:, :, 19, None]  # read the state before, between and after
    out = chunked_delta_rule(q, k, v, beta, None, 8)
    torch.testing.assert_close(out[:, :, 21], out[:, :, 19])  # (I - 2 k k^T)^2 = I
    assert not torch.allclose(out[:, :, 20], out[:, :, 19])  # one reflection moved it


@pytest.mark.parametrize("variant", ["deltanet", "gated_deltanet"])
def test_allow_neg_eigval_keeps_the_contract(variant: str) -> None:
    results = run_contract(small_attention(variant, allow_neg_eigval=True), CONTRACT_SIZES)
    assert [r.failure for r in results if not r.passed] == []


def test_allow_neg_eigval_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match=r"attention\.allow_neg_eigval"):
        small_attention("deltanet", allow_neg_eigval="yes")(**SHAPE)
