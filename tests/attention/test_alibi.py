"""ALiBi: the paper's slopes and bias; training in blocks of queries gives the equation's
outputs and gradients with no (T, T) tensor; half precision keeps the additive bias."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_same_function

from attn_lightning.attention.alibi import ALiBiAttention, alibi_slopes
from attn_lightning.bench.attention.memory_ledger import StorageLedger
from attn_lightning.errors import ConfigError


def test_power_of_two_slopes() -> None:
    expected = torch.tensor([2.0**-h for h in range(1, 9)])  # 1/2, 1/4, ..., 1/256
    torch.testing.assert_close(alibi_slopes(8), expected)
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([2.0**-h for h in (2, 4, 6, 8)]))


def test_non_power_of_two_slopes_follow_the_paper() -> None:
    # 6 heads: the 4 slopes of 4 heads, then every other slope of 8 heads (1/2, 1/8)
    expected = torch.tensor([2.0**-h for h in (2, 4, 6, 8, 1, 3)])
    torch.testing.assert_close(alibi_slopes(6), expected)


def test_bias_is_linear_in_distance() -> None:
    attn = ALiBiAttention(n_embd=32, n_head=4, block_size=32)
    pos = torch.arange(6)
    bias = attn.score_bias(pos, pos)  # (H, T, T)
    assert bias.shape == (4, 6, 6)
    torch.testing.assert_close(bias[1, 5, 2], torch.tensor(-3 * 2.0**-4))
    assert torch.isinf(bias[0, 2, 3]) and bias[0, 3, 3] == 0


def paper_alibi(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) - m_h (i - j)) v over j <= i, the slopes written out for 4 heads."""
    T, d = q.size(2), q.size(-1)
    slopes = torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8], dtype=q.dtype)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    bias = -slopes[:, None, None] * (i - j).to(q.dtype)
    scores = (q @ k.mT / math.sqrt(d) + bias).masked_fill(j > i, -math.inf)
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("block", [1, 8, 64])  # 37 = 4 x 8 + 5: a ragged last block
def test_training_in_query_blocks_gives_the_papers_outputs_and_gradients(block: int) -> None:
    torch.manual_seed(0)
    attn = ALiBiAttention(n_embd=32, n_head=4, block_size=64, query_block=block).double()
    q, k, v = (torch.randn(2, 4, 37, 8, dtype=torch.float64) for _ in range(3))
    assert_same_function(attn.attend, paper_alibi, q, k, v)


def test_training_allocates_no_t_by_t_tensor() -> None:
    """Forward and backward at T = 512 in float32 peak below one (H, T, T) bias, the tensor
    the additive mask would be (broadcast over the batch)."""
    T = 512
    attn = ALiBiAttention(n_embd=32, n_head=4, block_size=T, query_block=64)
    q, k, v = (torch.randn(2, 4, T, 8, requires_grad=True) for _ in range(3))
    with StorageLedger() as ledger:
        attn.attend(q, k, v).sum().backward()
    assert ledger.peak < 4 * T * T * 4, f"peak {ledger.peak / 2**20:.1f} MiB"


def test_half_precision_keeps_the_additive_bias() -> None:
    torch.manual_seed(0)
    attn = ALiBiAttention(n_embd=32, n_head=4, block_size=64).to(torch.bfloat16)
    q, k, v = (torch.randn(2, 4, 37, 8, dtype=torch.float64) for _ in range(3))
    out = attn.attend(*(t.bfloat16() for t in (q, k, v)))
    torch.testing.assert_close(out.double(), paper_alibi(q, k, v), atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("block", [0, 1.5, False])
def test_a_query_block_below_one_is_refused(block) -> None:
    with pytest.raises(ConfigError, match=r"attention\.query_block"):
        ALiBiAttention(n_embd=32, n_head=4, block_size=64, query_block=block)
