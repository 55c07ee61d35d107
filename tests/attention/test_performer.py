"""FAVOR+ approximates softmax attention, better with more features; it stays finite for
large inputs; its projection is redrawn on schedule, reproducibly."""

from __future__ import annotations

import copy
import itertools
import math

import torch
import torch.nn.functional as F

from attn_lightning.attention.performer import PerformerAttention


def performer(**kwargs) -> PerformerAttention:
    return PerformerAttention(n_embd=64, n_head=2, block_size=64, **kwargs).eval()


def test_error_falls_as_features_grow() -> None:
    torch.manual_seed(0)
    q, k, v = (0.5 * torch.randn(4, 2, 64, 32) for _ in range(3))
    exact = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    errors = []
    for nb_features in (8, 32, 128, 512):
        err = 0.0
        for seed in range(3):
            torch.manual_seed(seed)
            attn = performer(nb_features=nb_features)
            err += (attn.attend(q, k, v) - exact).pow(2).mean().sqrt().item() / 3
        errors.append(err)
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.35 * errors[0], errors


def test_default_features_are_about_d_ln_d() -> None:
    assert performer().nb_features == round(32 * math.log(32))


def test_stable_for_large_inputs() -> None:
    torch.manual_seed(0)
    attn = performer(nb_features=64)
    q, k, v = (8 * torch.randn(1, 2, 64, 32) for _ in range(3))
    out = attn.attend(q, k, v)
    assert torch.isfinite(out).all()
    assert torch.isfinite(attn.attention_matrix(q, k)).all()


def test_redraw_schedule_is_deterministic_and_resumable() -> None:
    torch.manual_seed(0)
    attn = performer(nb_features=16, redraw_interval=3).train()
    x = torch.randn(1, 8, 64)
    initial = attn.projection.clone()
    for _ in range(3):
        attn(x)
    torch.testing.assert_close(attn.projection, initial)  # steps 0, 1, 2: first draw
    state = copy.deepcopy(attn.state_dict())
    attn(x)  # step 3: redraw
    assert not torch.allclose(attn.projection, initial)
    resumed = performer(nb_features=16, redraw_interval=3).train()  # other random init
    resumed.load_state_dict(state)
    resumed(x)
    torch.testing.assert_close(resumed.projection, attn.projection)
    attn.eval()(x)
    assert int(attn.training_steps) == 4  # evaluation neither counts nor redraws


def test_training_path_pads_features_with_zeros_only() -> None:
    """attend's features, padded to a multiple of 16 (111 -> 112 at d = 32), are the method's
    111 features plus exact zeros: the output and the gradients equal those of the unpadded
    chunked form (float64), and a query's stabiliser ignores the padding."""
    from attn_lightning.attention.linear_kernel import chunked_causal_linear_attention

    torch.manual_seed(0)
    attn = PerformerAttention(n_embd=64, n_head=2, block_size=64).double()
    assert attn.nb_features == 111
    q, k, v = (torch.randn(2, 2, 40, 32, dtype=torch.float64, requires_grad=True) for _ in range(3))
    padded = attn.features(q, True, 16)
    assert padded.shape[-1] == 112 and (padded[..., 111] == 0).all()
    torch.testing.assert_close(padded[..., :111], attn.features(q, True))
    maxima = padded[..., :111].amax(-1)
    torch.testing.assert_close(maxima, torch.ones_like(maxima))  # a query row: its own max is 1
    grad = torch.randn_like(v)
    out = attn.attend(q, k, v)
    fq, fk = attn.features(q, True), attn.features(k, False)
    plain = chunked_causal_linear_attention(fq, fk, v, attn.chunk_size, attn.eps, state=None)
    torch.testing.assert_close(out, plain)
    for fast, slow in zip(
        torch.autograd.grad(out, (q, k, v), grad),
        torch.autograd.grad(plain, (q, k, v), grad),
        strict=True,
    ):
        torch.testing.assert_close(fast, slow)
