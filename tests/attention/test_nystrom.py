"""Causal Nyströmformer: refuses settings it cannot make causal; the landmark inverse is
lower triangular and exact after ceil(log2 m) iterations; with one position per segment it
is exactly softmax attention."""

from __future__ import annotations

import pytest
import torch

from attn_lightning.attention.nystrom import NystromAttention, triangular_inverse
from attn_lightning.attention.vanilla import VanillaAttention

SHAPE = {"n_embd": 32, "n_head": 4, "block_size": 32}


def test_refuses_landmarks_not_dividing_block_size() -> None:
    with pytest.raises(ValueError, match=r"dividing model\.block_size"):
        NystromAttention(**SHAPE, num_landmarks=6)


def test_triangular_inverse() -> None:
    torch.manual_seed(0)
    A = torch.softmax(torch.randn(3, 8, 8).masked_fill(~torch.ones(8, 8).tril().bool(), -1e9), -1)
    Z = triangular_inverse(A.double(), iterations=3)  # 2^3 >= 8
    torch.testing.assert_close(Z @ A.double(), torch.eye(8).double().expand(3, 8, 8))
    assert Z.triu(1).abs().max() == 0
    rough = triangular_inverse(A.double(), iterations=1)
    assert rough.triu(1).abs().max() == 0  # causal at any iteration count
    assert not torch.allclose(rough @ A.double(), torch.eye(8).double())


def test_unit_segments_are_softmax() -> None:
    torch.manual_seed(0)
    vanilla = VanillaAttention(**SHAPE).eval()
    nystrom = NystromAttention(**SHAPE, num_landmarks=32, pinv_iterations=8).eval()
    nystrom.load_state_dict(vanilla.state_dict())
    x = torch.randn(2, 32, 32)
    torch.testing.assert_close(nystrom(x)[0], vanilla(x)[0], rtol=0, atol=1e-4)
