from __future__ import annotations

import torch

from attn_lightning.attention.sparse import SparseAttention

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
