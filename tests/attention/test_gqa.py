"""Grouped/multi-query attention (the base's n_kv_head option, conf/attention/gqa.yaml and
mqa.yaml): with as many k/v heads as heads it is vanilla; fewer are projected and cached."""

from __future__ import annotations

import pytest
import torch

from attn_lightning.attention.vanilla import VanillaAttention

SHAPE = {"n_embd": 32, "n_head": 4, "block_size": 32}


def test_as_many_kv_heads_as_heads_is_vanilla() -> None:
    torch.manual_seed(0)
    vanilla = VanillaAttention(**SHAPE).eval()
    gqa = VanillaAttention(**SHAPE, n_kv_head=4).eval()
    gqa.load_state_dict(vanilla.state_dict())
    x = torch.randn(2, 16, 32)
    torch.testing.assert_close(gqa(x)[0], vanilla(x)[0])


@pytest.mark.parametrize("n_kv_head", [1, 2])
def test_fewer_kv_heads_are_projected_and_cached(n_kv_head: int) -> None:
    torch.manual_seed(0)
    attn = VanillaAttention(**SHAPE, n_kv_head=n_kv_head).eval()
    assert attn.qkv.out_features == 32 + 2 * n_kv_head * 8
    cache = attn.new_cache()
    x = torch.randn(3, 10, 32)
    attn(x[:, :6], cache=cache)
    attn(x[:, 6:], cache=cache)
    assert cache.k.shape == cache.v.shape == (3, n_kv_head, 10, 8)
    # heads of one group share keys: their scores differ only through their queries
    att = attn(x, return_attn=True)[1]
    q = attn.qkv(x)[..., :32].view(3, 10, 4, 8).transpose(1, 2)
    k = attn.qkv(x)[..., 32 : 32 + n_kv_head * 8].view(3, 10, n_kv_head, 8).transpose(1, 2)
    vanilla = VanillaAttention(**SHAPE)
    expected = vanilla.attention_matrix(q, k.repeat_interleave(4 // n_kv_head, dim=1))
    torch.testing.assert_close(att, expected)


def test_kv_heads_must_divide_heads() -> None:
    with pytest.raises(ValueError, match="n_kv_head"):
        VanillaAttention(**SHAPE, n_kv_head=3)
