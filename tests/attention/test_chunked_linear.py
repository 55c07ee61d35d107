"""The fast kernels' own backwards (chunked_linear.py, the Performer's feature map): equal to
autograd through the plain expressions they replace, in float64, at chunk boundaries and a
ragged T, with and without a carried state."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from attn_lightning.attention.chunked_linear import chunked_linear_attention
from attn_lightning.attention.linear_kernel import LinearAttentionState, recurrent_linear_attention
from attn_lightning.attention.performer import PositiveRandomFeatures


def _inputs(T: int, M: int = 5, D: int = 4, carried: bool = False) -> list[Tensor]:
    torch.manual_seed(0)
    shapes = [(2, 3, T, M), (2, 3, T, M), (2, 3, T, D)]
    if carried:
        shapes += [(2, 3, M, D), (2, 3, M)]
    tensors = [torch.rand(s, dtype=torch.float64) for s in shapes]
    tensors[2] = tensors[2] - 0.5  # values of either sign
    return [t.requires_grad_() for t in tensors]


def _materialised(q, k, v, eps, S0=None, z0=None):
    """y = (tril(Q K^T) V + Q S_0) / (tril(Q K^T) 1 + Q z_0 + eps), the whole (T, T) matrix."""
    scores = (q @ k.transpose(-2, -1)).tril()
    num, den = scores @ v, scores.sum(-1)
    if S0 is not None:
        num, den = num + q @ S0, den + (q * z0[:, :, None]).sum(-1)
    return num / (den + eps)[..., None]


@pytest.mark.parametrize(("T", "chunk_size"), [(16, 8), (17, 8), (7, 8), (13, 1)])
@pytest.mark.parametrize("carried", [False, True])
def test_forward_and_gradients_equal_the_materialised_form(T, chunk_size, carried) -> None:
    tensors = _inputs(T, carried=carried)
    y, S, z = chunked_linear_attention(*tensors[:3], chunk_size, 1e-3, *tensors[3:])
    expected = _materialised(*tensors[:3], 1e-3, *tensors[3:])
    torch.testing.assert_close(y, expected)
    k, v = tensors[1:3]
    torch.testing.assert_close(S, (tensors[3] if carried else 0) + k.transpose(-2, -1) @ v)
    torch.testing.assert_close(z, (tensors[4] if carried else 0) + k.sum(2))
    grad = torch.randn_like(y)
    ours = torch.autograd.grad(y, tensors, grad)
    theirs = torch.autograd.grad(expected, tensors, grad)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)


def test_gradcheck_with_a_carried_state_and_zero_eps() -> None:
    tensors = _inputs(11, M=3, D=2, carried=True)
    assert torch.autograd.gradcheck(
        lambda *t: chunked_linear_attention(*t[:3], 4, 0.0, *t[3:])[0], tensors
    )


def test_equals_the_recurrence_in_float32_over_many_chunks() -> None:
    torch.manual_seed(1)
    q, k = torch.rand(1, 2, 300, 6), torch.rand(1, 2, 300, 6)
    v = torch.randn(1, 2, 300, 3)
    y, _, _ = chunked_linear_attention(q, k, v, 64, 1e-6)
    torch.testing.assert_close(y, recurrent_linear_attention(q, k, v, 1e-6, LinearAttentionState()))


def _plain_features(x: Tensor, w: Tensor, is_query: bool) -> Tensor:
    """The Performer's feature map as plain autograd expressions (performer.py's docstring)."""
    x = x * x.size(-1) ** -0.25
    logits = x @ w.T - (x * x).sum(-1, keepdim=True) / 2
    if is_query:
        return (logits - logits.amax(-1, keepdim=True).detach()).exp()
    return (logits - (w * w).sum(-1).max() / 2).exp()


@pytest.mark.parametrize("is_query", [True, False])
def test_performer_features_equal_the_plain_expression(is_query: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 10, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(13, 8, dtype=torch.float64)
    ours = PositiveRandomFeatures.apply(x, w, is_query, 7)  # slabs of 7 rows: a ragged one
    theirs = _plain_features(x, w, is_query)
    torch.testing.assert_close(ours, theirs)
    grad = torch.randn_like(ours)
    torch.testing.assert_close(
        torch.autograd.grad(ours, x, grad)[0], torch.autograd.grad(theirs, x, grad)[0]
    )
