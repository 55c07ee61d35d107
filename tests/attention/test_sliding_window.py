from __future__ import annotations

import torch

from attn_lightning.attention.sliding_window import SlidingWindowAttention
from attn_lightning.attention.vanilla import VanillaAttention

SHAPE = {"n_embd": 32, "n_head": 4, "block_size": 32}


def test_window_at_least_T_equals_vanilla() -> None:
    torch.manual_seed(0)
    vanilla = VanillaAttention(**SHAPE).eval()
    sliding = SlidingWindowAttention(**SHAPE, window=32).eval()
    sliding.load_state_dict(vanilla.state_dict())
    x = torch.randn(2, 32, 32)
    torch.testing.assert_close(sliding(x)[0], vanilla(x)[0])
    short = SlidingWindowAttention(**SHAPE, window=4).eval()
    short.load_state_dict(vanilla.state_dict())
    assert not torch.allclose(short(x)[0], vanilla(x)[0])


def test_window_pattern_and_cache() -> None:
    attn = SlidingWindowAttention(**SHAPE, window=3).eval()
    att = attn(torch.randn(1, 10, 32), return_attn=True)[1]
    i, j = torch.arange(10)[:, None], torch.arange(10)[None, :]
    expected = (j <= i) & (j > i - 3)
    assert torch.equal(att[0, 0] > 0, expected)
    cache = attn.new_cache()
    for _ in range(10):
        attn(torch.randn(1, 1, 32), cache=cache)
    assert cache.k.shape == (1, 4, 3, 8) and cache.length == 10  # keeps only the window
