"""Based: the feature map is the 2nd-order Taylor kernel of the scaled dot product, and the
layer's chunked, recurrent and materialised paths equal attention written from that kernel."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import ATTENTION_SHAPE as SHAPE
from helpers import small_attention
from torch import Tensor

from attn_lightning.attention.based import BasedAttention
from attn_lightning.errors import ConfigError

D = SHAPE["n_embd"] // SHAPE["n_head"]  # head dim 8


def based(**overrides) -> BasedAttention:
    torch.manual_seed(0)
    attn = small_attention("based", **overrides)(**SHAPE).double().eval()
    for p in (attn.q_feature.weight, attn.k_feature.weight):  # beyond GPT's 0.02 init: s ~ 1
        torch.nn.init.normal_(p, std=1.0)
    return attn


def scaled_scores(attn: BasedAttention, q: Tensor, k: Tensor) -> Tensor:
    """s_ij = (q_i P_q)·(k_j P_k) / √F, (B, H, T, T)."""
    return attn.q_feature(q) @ attn.k_feature(k).transpose(-2, -1) / math.sqrt(attn.feature_dim)


@pytest.mark.parametrize("feature_dim", [1, 4, 16])
def test_feature_inner_product_is_the_taylor_kernel(feature_dim: int) -> None:
    attn = based(feature_dim=feature_dim)
    q, k = torch.randn(2, 4, 9, D, dtype=torch.float64), torch.randn(2, 4, 9, D).double()
    s = scaled_scores(attn, q, k)
    kernel = attn.features(q, True) @ attn.features(k, False).transpose(-2, -1)
    assert s.abs().max() > 1  # the s² term matters
    torch.testing.assert_close(kernel, 1 + s + s * s / 2, rtol=1e-12, atol=1e-12)
    assert attn.features(q, True).size(-1) == 1 + feature_dim + feature_dim * (feature_dim + 1) // 2


def taylor_attention(attn: BasedAttention, x: Tensor) -> Tensor:
    """The layer from the paper's equation: y_i = Σ_{j<=i} w_ij v_j / Σ_{j<=i} w_ij with
    w = 1 + s + s²/2, quadratic, without the feature map."""
    q, k, v = attn.split_heads(x)
    s = scaled_scores(attn, q, k)
    w = (1 + s + s * s / 2).tril()
    y = (w @ v) / w.sum(-1, keepdim=True)
    B, T, C = x.shape
    return attn.proj(y.transpose(1, 2).reshape(B, T, C))


def outer_product_recurrence(attn: BasedAttention, x: Tensor) -> Tensor:
    """Token by token, S_t = S_{t-1} + φ(k_t) v_tᵀ, z_t = z_{t-1} + φ(k_t), y_t = φ(q_t)ᵀS_t /
    φ(q_t)ᵀz_t, with the plain feature map φ(x) = [1, x/F^¼, vec(x ⊗ x)/(√2 √F)]."""
    F = attn.feature_dim

    def phi(u: Tensor) -> Tensor:
        u = u / F**0.25
        outer = (u[..., :, None] * u[..., None, :]).flatten(-2) / math.sqrt(2)
        return torch.cat((torch.ones_like(u[..., :1]), u, outer), dim=-1)

    q, k, v = attn.split_heads(x)
    fq, fk = phi(attn.q_feature(q)), phi(attn.k_feature(k))  # (B, H, T, 1 + F + F²)
    S = torch.zeros(*fk.shape[:2], fk.size(-1), D, dtype=x.dtype)
    z = torch.zeros(*fk.shape[:2], fk.size(-1), dtype=x.dtype)
    ys = []
    for t in range(x.size(1)):
        S = S + fk[:, :, t, :, None] * v[:, :, t, None, :]
        z = z + fk[:, :, t]
        ys.append((fq[:, :, t, None, :] @ S).squeeze(-2) / (fq[:, :, t] * z).sum(-1, keepdim=True))
    y = torch.stack(ys, dim=2)  # (B, H, T, D)
    B, T, C = x.shape
    return attn.proj(y.transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("T", [8, 16, 13, 29])  # multiples of chunk_size 8 and not
def test_chunked_equals_recurrent_equals_the_equation(T: int) -> None:
    attn = based()
    x = torch.randn(2, T, SHAPE["n_embd"], dtype=torch.float64)
    chunked, _ = attn(x)
    shown, att = attn(x, return_attn=True)
    cache = attn.new_cache()
    steps = torch.cat([attn(x[:, t : t + 1], cache=cache)[0] for t in range(T)], dim=1)
    reference = taylor_attention(attn, x)
    tight = {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(chunked, reference, **tight)
    torch.testing.assert_close(steps, reference, **tight)
    torch.testing.assert_close(shown, reference, **tight)
    torch.testing.assert_close(outer_product_recurrence(attn, x), reference, **tight)
    assert cache.S.shape == (2, 4, 1 + 16 + 16 * 17 // 2, D)  # O(1) state (B, H, M, D)
    assert torch.isclose(att.sum(-1), torch.ones((), dtype=att.dtype)).all()


def test_prefill_then_steps_continue_the_state() -> None:
    """A chunked prefill (13 tokens: not a multiple of 8) carries its state into the steps."""
    attn = based()
    x = torch.randn(2, 21, SHAPE["n_embd"], dtype=torch.float64)
    cache = attn.new_cache()
    prefill, _ = attn(x[:, :13], cache=cache)
    steps = [attn(x[:, t : t + 1], cache=cache)[0] for t in range(13, 21)]
    assert cache.length == 21
    decoded = torch.cat([prefill, *steps], dim=1)
    torch.testing.assert_close(decoded, taylor_attention(attn, x), rtol=1e-10, atol=1e-12)


def test_the_taylor_kernel_is_not_softmax_and_not_linear() -> None:
    """The reference can fail: dropping the s² term or using exp changes the output."""
    attn = based()
    x = torch.randn(1, 16, SHAPE["n_embd"], dtype=torch.float64)
    y, _ = attn(x)
    q, k, v = attn.split_heads(x)
    s = scaled_scores(attn, q, k)
    for w in (1 + s, s.exp()):
        w = w.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), 0)
        other = attn.proj(((w @ v) / w.sum(-1, keepdim=True)).transpose(1, 2).reshape(1, 16, -1))
        assert not torch.allclose(y, other, atol=1e-6)


def test_feature_dim_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"attention\.feature_dim"):
        small_attention("based", feature_dim=0)(**SHAPE)


def test_gpt_init_starts_near_uniform_averaging() -> None:
    """With GPT's N(0, 0.02) weights s ≈ 0: the kernel starts near 1 (a causal mean), finite."""
    from attn_lightning.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(65, 2, SHAPE["n_head"], SHAPE["n_embd"], 32, small_attention("based")).eval()
    out = model(torch.randint(65, (2, 32)), return_attn=True)
    att = out.attentions[0][0, 0]
    uniform = torch.ones(32, 32).tril() / torch.arange(1, 33)[:, None]
    torch.testing.assert_close(att, uniform, rtol=0, atol=1e-2)
    assert torch.isfinite(out.logits).all()
