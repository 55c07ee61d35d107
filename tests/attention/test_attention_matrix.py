"""`return_attn` shows the matrix each variant actually applies: lower triangular, rows
summing to 1 (except causal Linformer, whose value projection F is a free linear map), and
matrix @ v reproduces the fast path."""

from __future__ import annotations

import pytest
import torch
from helpers import ATTENTION_SHAPE as SHAPE

T = SHAPE["block_size"]


@pytest.mark.parametrize("T", [T, T - 3])  # T - 3: a partial last chunk / segment / block
@pytest.mark.parametrize("rope", [False, True])
def test_matrix_is_what_produces_the_output(
    make_attention, variant: str, rope: bool, T: int
) -> None:
    torch.manual_seed(0)
    attn = make_attention(variant, rope=rope)
    x = torch.randn(2, T, SHAPE["n_embd"])
    fast, none = attn(x)
    shown, att = attn(x, return_attn=True)
    assert none is None
    assert att.shape == (2, SHAPE["n_head"], T, T)
    torch.testing.assert_close(shown, fast, rtol=1e-5, atol=1e-6)
    assert att.triu(1).abs().max() == 0
    # the delta rules, decayed linear attention (retention, gla, mamba2): unnormalised, not convex
    if variant not in (
        "linformer",
        "deltanet",
        "gated_deltanet",
        "retention",
        "gla",
        "mamba2",
        "kda",
        "gated_deltaproduct",
        "rwkv7",
    ):
        torch.testing.assert_close(att.sum(-1), torch.ones(2, SHAPE["n_head"], T))


def test_matrix_differs_between_variants(make_attention) -> None:
    """Guard for the test above: different cores give different matrices from one input."""
    torch.manual_seed(0)
    x = torch.randn(1, T, SHAPE["n_embd"])
    vanilla, sliding = make_attention("vanilla"), make_attention("sliding_window")
    sliding.load_state_dict(vanilla.state_dict())
    assert not torch.allclose(vanilla(x, True)[1], sliding(x, True)[1])
