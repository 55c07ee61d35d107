"""Attention statistics on hand-built matrices whose values are known in closed form, and on
real layers (exact softmax has no gap; an approximation has one)."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from attn_lightning.analysis.probe import probe
from attn_lightning.analysis.stats import (
    distance,
    entropy,
    exact_softmax,
    head_statistics,
    local_ratio,
    scalar_metrics,
    softmax_gap,
)
from attn_lightning.attention.linear import LinearAttention
from attn_lightning.attention.registry import attention_factory, variant_names
from attn_lightning.attention.vanilla import VanillaAttention
from attn_lightning.model.gpt import GPT

T = 16


def uniform(T: int) -> torch.Tensor:
    """Row i uniform over keys 0..i, as (1, 1, T, T)."""
    att = torch.ones(T, T).tril()
    return (att / att.sum(-1, keepdim=True))[None, None]


def diagonal(T: int) -> torch.Tensor:
    return torch.eye(T)[None, None]


def first_token(T: int) -> torch.Tensor:
    att = torch.zeros(T, T)
    att[:, 0] = 1.0
    return att[None, None]


def test_uniform_attention() -> None:
    att = uniform(T)
    assert entropy(att).item() == pytest.approx(sum(math.log(i + 1) for i in range(T)) / T)
    assert distance(att).item() == pytest.approx((T - 1) / 4)  # mean over i of i / 2
    expected_local = sum(min(4, i + 1) / (i + 1) for i in range(T)) / T
    assert local_ratio(att, window=4).item() == pytest.approx(expected_local)


def test_one_hot_diagonal() -> None:
    att = diagonal(T)
    assert entropy(att).item() == 0.0
    assert distance(att).item() == 0.0
    assert local_ratio(att, window=1).item() == 1.0


def test_one_hot_first_token() -> None:
    att = first_token(T)
    assert entropy(att).item() == 0.0
    assert distance(att).item() == pytest.approx((T - 1) / 2)  # query i looks i positions back
    assert local_ratio(att, window=4).item() == pytest.approx(4 / T)  # only queries 0..3


def test_statistics_are_per_head_and_averaged_over_batch() -> None:
    att = torch.cat([uniform(T), diagonal(T)], dim=1).repeat(3, 1, 1, 1)  # (3, 2, T, T)
    stats = head_statistics(att)
    assert stats["entropy"].shape == (2,)
    assert stats["entropy"][1] == 0 and stats["entropy"][0] > 1
    assert stats["distance"].tolist() == pytest.approx([(T - 1) / 4, 0.0])
    metrics = scalar_metrics([stats])
    assert metrics["attn/0/entropy"] == pytest.approx(float(stats["entropy"].mean()))
    assert metrics["attn/0/head1/distance"] == 0.0
    assert "attn/0/local_ratio" in metrics and "attn/0/head0/local_ratio" not in metrics


def test_negative_weights_are_clamped_for_distributions() -> None:
    att = torch.tensor([[1.0, 0.0], [1.2, -0.2]])[None, None]  # rows sum to 1, one negative
    assert entropy(att).item() == 0.0  # row 1 read as one-hot on key 0
    assert distance(att).item() == pytest.approx(0.5)


def test_softmax_gap_is_total_variation() -> None:
    assert softmax_gap(uniform(T), uniform(T)).item() == 0.0
    # query 0 agrees (both on key 0); every other query has disjoint support: distance 1
    assert softmax_gap(diagonal(T), first_token(T)).item() == pytest.approx((T - 1) / T)


def test_exact_softmax_matches_the_vanilla_matrix() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, T, 8), torch.randn(2, 3, T, 8)
    attn = VanillaAttention(n_embd=24, n_head=3, block_size=T)
    torch.testing.assert_close(exact_softmax(q, k), attn.attention_matrix(q, k))


@pytest.mark.parametrize(
    ("attention", "exact"), [(VanillaAttention, True), (partial(LinearAttention), False)]
)
def test_probe_gap_is_zero_only_for_exact_softmax(attention, exact: bool) -> None:
    torch.manual_seed(0)
    model = GPT(65, 2, 2, 32, T, attention=attention).train()
    idx = torch.randint(65, (3, T))
    layers = probe(model, idx)
    assert model.training  # mode restored
    assert len(layers) == 2 and layers[0].applied.shape == (3, 2, T, T)
    gap = softmax_gap(layers[1].applied, layers[1].exact)
    if exact:
        assert gap.max() < 1e-5
    else:
        assert gap.min() > 1e-3


def test_figures_are_titled_and_written_atomically(tmp_path) -> None:
    from PIL import Image

    from attn_lightning.analysis.plots import attention_patterns, save_png

    layers = [uniform(8)[0].repeat(2, 1, 1), diagonal(8)[0].repeat(2, 1, 1)]
    fig = attention_patterns(layers, list("abcdefgh"), "my title")
    assert fig._suptitle.get_text() == "my title"
    assert [ax.get_title() for ax in fig.axes[:2]] == ["layer 0, head 0", "layer 0, head 1"]
    path = save_png(fig, tmp_path / "grid.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(path).size[0] > 300
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temp file left


@pytest.mark.parametrize("variant", variant_names())
def test_probe_gives_causal_matrices_for_every_variant(variant: str) -> None:
    """The attention-maps callback probes every layer at each validation: every variant's
    applied and exact matrices are (B, H, T, T), causal, and exact rows sum to one."""
    torch.manual_seed(0)
    model = GPT(65, 2, 2, 32, T, attention=attention_factory(variant))
    layers = probe(model, torch.randint(65, (2, T)))
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    for layer in layers:
        assert layer.applied.shape == layer.exact.shape == (2, 2, T, T)
        assert layer.exact[..., future].abs().max() == 0
        assert layer.applied[..., future].abs().max() < 1e-6
        torch.testing.assert_close(layer.exact.sum(-1), torch.ones(2, 2, T))
