"""Masks read from the variants' code by gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attn_lightning.analysis.masks import connectivity
from attn_lightning.attention.sliding_window import SlidingWindowAttention
from attn_lightning.attention.vanilla import VanillaAttention

T, C = 24, 16


class Bidirectional(VanillaAttention):
    """A broken 'causal' layer that sees the future (the probe must catch it)."""

    def attend(self, q, k, v, g=None):
        return F.scaled_dot_product_attention(q, k, v)


def test_vanilla_connects_every_causal_pair() -> None:
    mask = connectivity(VanillaAttention(C, 2, T), T, C)
    assert torch.equal(mask, torch.ones(T, T, dtype=torch.bool).tril())


def test_sliding_window_is_a_band() -> None:
    mask = connectivity(SlidingWindowAttention(C, 2, T, window=5), T, C)
    i, j = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
    assert torch.equal(mask, (j <= i) & (i - j < 5))


def test_a_leak_shows_in_the_mask() -> None:
    mask = connectivity(Bidirectional(C, 2, T), T, C)
    assert mask.all()


@pytest.mark.parametrize("training", [True, False])
def test_mode_is_restored(training: bool) -> None:
    attn = VanillaAttention(C, 2, T).train(training)
    connectivity(attn, T, C)
    assert attn.training == training
