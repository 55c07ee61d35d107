"""Sliding-window attention: a window of at least T is softmax attention; training in
blocks gives the band's outputs and gradients with no (T, T) tensor; the weights shown follow
the band; the decoding cache keeps the window."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_same_function

from attn_lightning.attention.sliding_window import SlidingWindowAttention
from attn_lightning.attention.vanilla import VanillaAttention
from attn_lightning.bench.attention.memory_ledger import StorageLedger

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


def band_softmax(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Each query i alone: softmax over the keys max(0, i - window + 1) .. i."""
    out = torch.empty_like(q)
    for i in range(q.size(2)):
        lo = max(0, i - window + 1)
        scores = q[:, :, i, None] @ k[:, :, lo : i + 1].mT / math.sqrt(q.size(-1))
        out[:, :, i] = (scores.softmax(-1) @ v[:, :, lo : i + 1])[:, :, 0]
    return out


@pytest.mark.parametrize(("T", "window"), [(37, 1), (37, 3), (37, 8), (40, 8), (9, 8)])
def test_training_in_blocks_gives_the_bands_outputs_and_gradients(T: int, window: int) -> None:
    attn = SlidingWindowAttention(**SHAPE, window=window).double()
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, T, 8, dtype=torch.float64) for _ in range(3))
    assert_same_function(attn.attend, lambda q, k, v: band_softmax(q, k, v, window), q, k, v)


def test_training_allocates_no_t_by_t_tensor() -> None:
    """Forward and backward at T = 1024, window 16, head dim 8: the peak stays within 16 times
    the size of q; the masked form's (B, H, T, T) weights alone are T / d = 128 times it."""
    T = 1024
    attn = SlidingWindowAttention(n_embd=32, n_head=4, block_size=T, window=16)
    q, k, v = (torch.randn(2, 4, T, 8, requires_grad=True) for _ in range(3))
    with StorageLedger() as ledger:
        attn.attend(q, k, v).sum().backward()
    assert ledger.peak < 16 * q.numel() * 4, f"peak {ledger.peak / 2**20:.1f} MiB"
