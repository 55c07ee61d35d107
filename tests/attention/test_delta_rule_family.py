"""The delta-rule family's shared kernel (attention/delta_rule.py) for each kind of decay: none
(DeltaNet), one per head and token (Gated DeltaNet), one per key channel too (KDA). The chunked
form, the recurrent form and the materialised matrix equal the recurrence written out step by
step (helpers.delta_rule_recurrence, float64), at lengths that are and are not multiples of the
chunk size, from zero and from a carried state, gradients included. The family's layers (Gated
DeltaProduct too) decode what they compute and keep the contract with negative eigenvalues.
What one variant alone has is tested in its own file."""

from __future__ import annotations

import pytest
import torch
from helpers import ATTENTION_SHAPE as SHAPE
from helpers import (
    DECAYS,
    DELTA_RULE_SIZES,
    delta_rule_inputs,
    delta_rule_recurrence,
    small_attention,
)
from torch import Tensor

from attn_lightning.analysis.contract import ContractSizes, run_contract
from attn_lightning.attention.delta_rule import (
    DeltaRuleState,
    chunked_delta_rule,
    delta_rule_matrix,
    recurrent_delta_rule,
)

B, H, DK, DV = DELTA_RULE_SIZES
FAMILY = ("deltanet", "gated_deltanet", "kda", "gated_deltaproduct")
NAMES = ("q", "k", "v", "beta", "log_alpha")


def at(tensors: tuple[Tensor | None, ...], positions: slice) -> list[Tensor | None]:
    """q, k, v, β and log α at the given positions; no decay stays None."""
    return [None if x is None else x[:, :, positions] for x in tensors]


@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("T", [16, 37])  # a multiple of the chunk size 8, and not
@pytest.mark.parametrize("chunk_size", [1, 8, 64])
def test_chunked_and_recurrent_equal_the_paper(decay: str, T: int, chunk_size: int) -> None:
    q, k, v, beta, log_alpha = delta_rule_inputs(T, decay)
    expected, S = delta_rule_recurrence(q, k, v, beta, log_alpha)
    chunk_state, step_state = DeltaRuleState(), DeltaRuleState()
    chunked = chunked_delta_rule(q, k, v, beta, log_alpha, chunk_size, chunk_state)
    torch.testing.assert_close(chunked, expected)
    torch.testing.assert_close(recurrent_delta_rule(q, k, v, beta, log_alpha, step_state), expected)
    torch.testing.assert_close(chunk_state.S, S)
    torch.testing.assert_close(step_state.S, S)
    assert chunk_state.length == step_state.length == T


@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("chunk_size", [4, 8])  # 37 positions: the last chunk padded
def test_chunked_gradients_equal_the_papers(decay: str, chunk_size: int) -> None:
    """Gradients of q, k, v, β and log α (where there is one) through the chunked form's own
    backward equal autograd's through the recurrence."""
    q, k, v, beta, log_alpha = delta_rule_inputs(37, decay)
    leaves = [x.requires_grad_() for x in (q, k, v, beta, log_alpha) if x is not None]
    weight = torch.randn(B, H, 37, DV, dtype=torch.float64)
    expected_out, _ = delta_rule_recurrence(q, k, v, beta, log_alpha)
    expected = torch.autograd.grad((expected_out * weight).sum(), leaves)
    chunked = chunked_delta_rule(q, k, v, beta, log_alpha, chunk_size)
    got = torch.autograd.grad((chunked * weight).sum(), leaves)
    for name, g, e in zip(NAMES[: len(leaves)], got, expected, strict=True):
        torch.testing.assert_close(g, e, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("split", [8, 13])
def test_continues_from_a_carried_state(decay: str, split: int) -> None:
    """Prefill `split` tokens (chunked), then continue chunked or token by token."""
    tensors = delta_rule_inputs(37, decay)
    expected, _ = delta_rule_recurrence(*tensors)
    head, rest = at(tensors, slice(None, split)), at(tensors, slice(split, None))
    _, S_split = delta_rule_recurrence(*head)
    for continue_chunked in (True, False):
        state = DeltaRuleState()
        first = chunked_delta_rule(*head, 8, state)
        torch.testing.assert_close(state.S, S_split)
        if continue_chunked:
            second = chunked_delta_rule(*rest, 8, state)
        else:
            second = recurrent_delta_rule(*rest, state)
        torch.testing.assert_close(torch.cat((first, second), dim=2), expected)
        assert state.length == 37


@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("T", [16, 21])
def test_matrix_applied_to_v_is_the_fast_path(decay: str, T: int) -> None:
    q, k, v, beta, log_alpha = delta_rule_inputs(T, decay)
    matrix = delta_rule_matrix(q, k, beta, log_alpha)
    assert matrix.shape == (B, H, T, T) and matrix.triu(1).abs().max() == 0
    torch.testing.assert_close(matrix @ v, chunked_delta_rule(q, k, v, beta, log_alpha, 8))
    if log_alpha is not None:
        assert not torch.allclose(matrix, delta_rule_matrix(q, k, beta))  # the decay is in it


@pytest.mark.parametrize("decay", DECAYS)
def test_a_repeated_key_with_beta_one_is_overwritten(decay: str) -> None:
    """β = 1: S_t^T k_t = S_{t-1}^T diag(α_t) (k_t - k_t) + v_t = v_t, whatever the decay.
    Writing k again replaces its value: the state answers k with the newest v, whatever was
    stored before."""
    q, k, v, beta, log_alpha = delta_rule_inputs(21, decay)
    k[:, :, 15] = k[:, :, 4]  # the key of position 4 again at 15 ...
    beta[:, :, 15] = 1.0  # ... written with full strength
    q[:, :, 15] = k[:, :, 15]  # and read back at once
    q[:, :, 20], beta[:, :, 16:] = k[:, :, 4], 0.0  # read again after writes with β = 0
    for out in (
        chunked_delta_rule(q, k, v, beta, log_alpha, 8),
        recurrent_delta_rule(q, k, v, beta, log_alpha, DeltaRuleState()),
    ):
        torch.testing.assert_close(out[:, :, 15], v[:, :, 15])
        assert not torch.allclose(out[:, :, 15], v[:, :, 4])  # the old value is gone
        if log_alpha is None:  # which change nothing without a decay
            torch.testing.assert_close(out[:, :, 20], v[:, :, 15])


@pytest.mark.parametrize("n_kv_head", [4, 2])
@pytest.mark.parametrize("short_conv", [0, 3])
@pytest.mark.parametrize("variant", FAMILY)
def test_layer_decodes_what_it_computes(variant: str, n_kv_head: int, short_conv: int) -> None:
    """The layer's chunked training path (29 tokens, chunks of 8 positions or sub-steps) equals
    prefill of 11 + token-by-token decoding with an O(1) state, grouped k/v heads and a short
    convolution too."""
    torch.manual_seed(0)
    options = {"num_householder": 3} if variant == "gated_deltaproduct" else {}
    factory = small_attention(variant, short_conv=short_conv, **options)
    attn = factory(**SHAPE, n_kv_head=n_kv_head).eval()
    x = torch.randn(2, 29, SHAPE["n_embd"])
    parallel, _ = attn(x)
    cache = attn.new_cache()
    steps = [attn(x[:, :11], cache=cache)[0]]  # prefill (chunked, with a state), then steps
    steps += [attn(x[:, t : t + 1], cache=cache)[0] for t in range(11, 29)]
    torch.testing.assert_close(torch.cat(steps, 1), parallel)
    core_cache = cache if short_conv == 0 else cache.core
    assert core_cache.S.shape == (2, SHAPE["n_head"], 8, 8) and core_cache.length == 29


@pytest.mark.parametrize("variant", FAMILY)
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


@pytest.mark.parametrize("variant", FAMILY)
def test_allow_neg_eigval_keeps_the_contract(variant: str) -> None:
    sizes = ContractSizes(n_embd=SHAPE["n_embd"], n_head=SHAPE["n_head"], length=48)
    results = run_contract(small_attention(variant, allow_neg_eigval=True), sizes)
    assert [r.failure for r in results if not r.passed] == []
