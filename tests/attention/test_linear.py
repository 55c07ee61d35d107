"""Linear attention and the Performer: the chunked (parallel) form equals the recurrent (RNN)
form, for chunk sizes that do and do not divide T, and when continuing from a state."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from attn_lightning.attention.linear_kernel import (
    KernelAttention,
    LinearAttentionState,
    chunked_causal_linear_attention,
    linear_attention_matrix,
    recurrent_linear_attention,
)


def features(B=2, H=3, T=37, M=5, D=4):
    torch.manual_seed(0)
    return torch.rand(B, H, T, M), torch.rand(B, H, T, M), torch.randn(B, H, T, D)


@pytest.mark.parametrize("chunk_size", [1, 5, 8, 37, 64])
def test_chunked_equals_recurrent(chunk_size: int) -> None:
    q, k, v = features()
    chunked = chunked_causal_linear_attention(q, k, v, chunk_size, 1e-6, state=None)
    recurrent = recurrent_linear_attention(q, k, v, 1e-6, LinearAttentionState())
    torch.testing.assert_close(chunked, recurrent)
    torch.testing.assert_close(chunked, linear_attention_matrix(q, k, 1e-6) @ v)


def test_chunked_continues_from_state() -> None:
    q, k, v = features()
    state = LinearAttentionState()
    first = chunked_causal_linear_attention(q[:, :, :20], k[:, :, :20], v[:, :, :20], 8, 0, state)
    second = chunked_causal_linear_attention(q[:, :, 20:], k[:, :, 20:], v[:, :, 20:], 8, 0, state)
    whole = recurrent_linear_attention(q, k, v, 0.0, LinearAttentionState())
    assert state.length == 37
    torch.testing.assert_close(torch.cat((first, second), 2), whole)


@pytest.mark.parametrize("variant", ["linear", "performer"])
def test_variant_parallel_equals_recurrent(make_attention, variant: str) -> None:
    """The module's training path and its token-by-token decoding path agree."""
    attn = make_attention(variant)
    x = torch.randn(2, 29, 32)
    parallel, _ = attn(x)
    cache = attn.new_cache()
    steps = [attn(x[:, t : t + 1], cache=cache)[0] for t in range(29)]
    torch.testing.assert_close(torch.cat(steps, 1), parallel)
    assert cache.S.shape == (2, 4, cache.S.size(2), 8)  # O(1) state: (B, H, M, D)


class SquaredFeatures(KernelAttention):
    """A variant that gives only its feature map and eps."""

    eps = 1e-3

    def features(self, x: Tensor, is_query: bool) -> Tensor:
        return x * x if is_query else x.abs()


def test_a_feature_map_is_a_whole_variant() -> None:
    """The kernel base runs a new feature map on all three paths, and they agree with the
    equation written out."""
    torch.manual_seed(0)
    attn = SquaredFeatures(n_embd=32, n_head=4, block_size=32, chunk_size=8).eval()
    x = torch.randn(2, 21, 32)
    parallel, _ = attn(x)
    shown, att = attn(x, return_attn=True)
    cache = attn.new_cache()
    steps = [attn(x[:, t : t + 1], cache=cache)[0] for t in range(21)]
    torch.testing.assert_close(shown, parallel)
    torch.testing.assert_close(torch.cat(steps, 1), parallel)
    q, k, _ = attn.split_heads(x)
    scores = ((q * q) @ k.abs().transpose(-2, -1)).tril()  # φ(q_i)·φ(k_j), j <= i
    torch.testing.assert_close(att, scores / (scores.sum(-1, keepdim=True) + 1e-3))
