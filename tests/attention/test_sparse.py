"""Fixed sparse attention: the documented pattern; training in blocks gives the pattern's
outputs and gradients in a fraction of the masked form's memory."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_same_function

from attn_lightning.attention.sparse import SparseAttention
from attn_lightning.attention.vanilla import VanillaAttention
from attn_lightning.bench.attention.memory_ledger import StorageLedger

# block 4, summary 1, T 10: rows are queries; 1 = may attend (docstring rule)
EXPECTED = torch.tensor(
    [
        [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 1, 1, 0, 0, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 1, 0, 0, 0, 1, 1, 0],
        [0, 0, 0, 1, 0, 0, 0, 1, 1, 1],
    ],
    dtype=torch.bool,
)


def test_pattern_equals_documented_mask() -> None:
    attn = SparseAttention(n_embd=32, n_head=4, block_size=32, block=4, summary=1).eval()
    att = attn(torch.randn(2, 10, 32), return_attn=True)[1]
    assert torch.equal(att > 0, EXPECTED.expand_as(att))


def test_two_summary_positions() -> None:
    attn = SparseAttention(n_embd=32, n_head=4, block_size=32, block=4, summary=2)
    pos = torch.arange(10)
    allowed = attn.allowed(pos, pos)
    assert allowed[9].tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 1, 1]


def masked_softmax(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor):
    """softmax over the allowed keys of each query, the (T, T) pattern written out."""
    scores = q @ k.mT / math.sqrt(q.size(-1))
    return scores.masked_fill(~allowed, -math.inf).softmax(-1) @ v


@pytest.mark.parametrize(("T", "block", "summary"), [(37, 4, 1), (37, 8, 3), (40, 8, 2), (9, 4, 4)])
def test_training_in_blocks_gives_the_patterns_outputs_and_gradients(T, block, summary) -> None:
    attn = SparseAttention(n_embd=32, n_head=4, block_size=64, block=block, summary=summary)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, T, 8, dtype=torch.float64) for _ in range(3))
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (j <= i) & ((j // block == i // block) | (j % block >= block - summary))
    assert_same_function(attn.attend, lambda q, k, v: masked_softmax(q, k, v, allowed), q, k, v)


def test_training_needs_a_fraction_of_the_masked_forms_memory() -> None:
    """Forward and backward at T = 1024, blocks of 16: the blocked form peaks below a quarter
    of the masked form's ((T, T) mask, (B, H, T, T) weights), measured alike."""
    T = 1024
    attn = SparseAttention(n_embd=32, n_head=4, block_size=T, block=16, summary=1)
    q, k, v = (torch.randn(2, 4, T, 8, requires_grad=True) for _ in range(3))
    peaks = []
    for attend in (attn.attend, lambda *qkv: VanillaAttention.attend(attn, *qkv)):
        with StorageLedger() as ledger:
            attend(q, k, v).sum().backward()
        peaks.append(ledger.peak)
    assert peaks[0] < peaks[1] / 4, f"peaks {[p / 2**20 for p in peaks]} MiB"
