"""`attention.short_conv`: the convolution is depthwise and causal by its definition, and every
variant with it stays causal and decodes incrementally exactly as it recomputes in full."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import ATTENTION_SHAPE as SHAPE
from helpers import small_attention

from attn_lightning.attention.short_conv import ShortConvCache, ShortConvolution
from attn_lightning.errors import ConfigError
from attn_lightning.model.decoding import IncrementalDecoder
from attn_lightning.model.gpt import GPT

T = SHAPE["block_size"]
K = 3


def definition(conv: ShortConvolution, x: torch.Tensor) -> torch.Tensor:
    """y_t[c] = silu(Σ_j w[c, j] x_{t-K+1+j}[c]), x before position 0 being zero."""
    w = conv.conv.weight[:, 0]  # (C, K)
    y = torch.zeros_like(x)
    for t in range(x.size(1)):
        for j in range(conv.kernel_size):
            s = t - conv.kernel_size + 1 + j
            if s >= 0:
                y[:, t] += w[:, j] * x[:, s]
    return F.silu(y)


@pytest.mark.parametrize("kernel_size", [1, 2, 4])
def test_convolution_is_its_definition(kernel_size: int) -> None:
    torch.manual_seed(0)
    conv = ShortConvolution(6, kernel_size).double()
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    y, state = conv(x)
    torch.testing.assert_close(y, definition(conv, x))
    assert state.shape == (2, 6, kernel_size - 1)
    torch.testing.assert_close(state, x[:, 11 - (kernel_size - 1) :].transpose(1, 2))


def test_convolution_is_causal_and_depthwise() -> None:
    """Changing x_t[c] changes y_s[c'] only for c' = c and t <= s < t + K."""
    torch.manual_seed(0)
    conv = ShortConvolution(5, K)
    x = torch.randn(1, 12, 5, requires_grad=True)
    y, _ = conv(x)
    for t, c in [(0, 0), (5, 2), (11, 4)]:
        (grad,) = torch.autograd.grad(y[0, :, c].sum(), x, retain_graph=True)
        touched = grad[0].abs() > 0  # (T, C): inputs output channel c reads
        assert touched[:, c].any() and not touched[:, [i for i in range(5) if i != c]].any()
        (grad,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        reads = (grad[0].abs() > 0).any(-1).nonzero().flatten().tolist()
        assert reads == list(range(max(0, t - K + 1), t + 1)), (t, reads)


def test_convolution_continues_from_its_state() -> None:
    torch.manual_seed(0)
    conv = ShortConvolution(4, K)
    x = torch.randn(2, 10, 4)
    whole, _ = conv(x)
    first, state = conv(x[:, :6])
    parts = [first]
    for t in range(6, 10):
        y, state = conv(x[:, t : t + 1], state)
        parts.append(y)
    torch.testing.assert_close(torch.cat(parts, 1), whole)


@pytest.mark.parametrize("bad", [-1, True, 2.5])
def test_kernel_size_is_validated(bad) -> None:
    with pytest.raises(ConfigError, match=r"attention\.short_conv"):
        small_attention("vanilla", short_conv=bad)(**SHAPE)


def test_off_adds_nothing_and_on_adds_one_filter_per_channel(variant: str) -> None:
    off = small_attention(variant, short_conv=0)(**SHAPE)  # mamba2's YAML turns it on
    on = small_attention(variant, short_conv=K)(**SHAPE)
    assert off.short_conv == 0 and off.qkv_conv is None
    assert not isinstance(off.new_cache(), ShortConvCache)
    assert isinstance(on.new_cache(), ShortConvCache)
    channels = on.qkv.out_features
    extra = sum(p.numel() for p in on.parameters()) - sum(p.numel() for p in off.parameters())
    assert extra == channels * K


def test_layer_with_short_conv_is_causal(variant: str) -> None:
    torch.manual_seed(0)
    attn = small_attention(variant, short_conv=K)(**SHAPE).eval()
    x = torch.randn(2, T, SHAPE["n_embd"], requires_grad=True)
    y, _ = attn(x)
    for t in (0, 7, 8, 20):
        x2 = x.detach().clone()
        x2[:, t + 1 :] += torch.randn_like(x2[:, t + 1 :])
        torch.testing.assert_close(attn(x2)[0][:, : t + 1], y[:, : t + 1], rtol=0, atol=1e-6)
        (grad,) = torch.autograd.grad(y[:, t].sum(), x, retain_graph=True)
        assert grad[:, t + 1 :].abs().max() == 0, f"gradient leaks from after {t}"
        assert grad[:, t].abs().max() > 0


def test_the_convolution_is_used(variant: str) -> None:
    """The output differs from the same weights without it, and split_heads() gives the q, k,
    v the core saw (conv included): attention_matrix on them reproduces the output."""
    torch.manual_seed(0)
    attn = small_attention(variant, short_conv=K)(**SHAPE).eval()
    x = torch.randn(2, T, SHAPE["n_embd"])
    y, _ = attn(x, return_attn=True)
    torch.testing.assert_close(y, attn(x)[0], rtol=1e-4, atol=1e-5)
    q, k, v = attn.core_inputs(*attn.split_heads(x))
    g = attn.gates(x)
    # gated_deltaproduct's v holds n_h sub-steps per token: it applies a (T, n_h T) matrix
    matrix = attn.substep_matrix if variant == "gated_deltaproduct" else attn.attention_matrix
    again = matrix(q, k, g) @ v
    B, _, C = x.shape
    torch.testing.assert_close(attn.proj(again.transpose(1, 2).reshape(B, T, C)), y)
    plain = attn.qkv_conv
    attn.qkv_conv = None
    assert not torch.allclose(attn(x)[0], y, atol=1e-4)
    attn.qkv_conv = plain


def test_layer_decodes_token_by_token(variant: str) -> None:
    """Prefill 11 tokens, then one at a time: the outputs of a single forward pass."""
    torch.manual_seed(0)
    attn = small_attention(variant, short_conv=K)(**SHAPE).eval()
    x = torch.randn(2, 20, SHAPE["n_embd"])
    full, _ = attn(x)
    cache = attn.new_cache()
    parts = [attn(x[:, :11], cache=cache)[0]]
    parts += [attn(x[:, t : t + 1], cache=cache)[0] for t in range(11, 20)]
    assert cache.length == 20 and cache.conv.shape == (2, attn.qkv.out_features, K - 1)
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-4, atol=1e-5)


def test_gpt_incremental_equals_full_recomputation(variant: str) -> None:
    block = 16
    attention = small_attention(
        variant,
        {"chunk_size": 4, "num_segments": 4, "num_landmarks": 4, "block": 4, "window": 5},
        short_conv=K,
    )
    torch.manual_seed(0)
    model = GPT(65, 2, 4, 32, block, attention).eval()
    sequence = torch.randint(65, (2, block + 4))
    decoder = IncrementalDecoder(model)
    with torch.no_grad():
        for length in range(3, sequence.size(1) + 1):
            full = model.full_logits(sequence[:, :length])
            torch.testing.assert_close(decoder(sequence[:, :length]), full, rtol=1e-4, atol=1e-5)
