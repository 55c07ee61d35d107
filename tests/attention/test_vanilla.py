"""The softmax family: a subclass that changes the mask (`allowed`) or the bias (`score_bias`)
gets it honoured on every path, with no flag to remember."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from attn_lightning.attention.vanilla import VanillaAttention

SHAPE = {"n_embd": 32, "n_head": 4, "block_size": 32}


class OnlySelf(VanillaAttention):
    """Each query sees only its own key: the output at i is the projected value of i."""

    def allowed(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        return k_pos[None, :] == q_pos[:, None]


class NoRecentKeys(VanillaAttention):
    """A bias that hides the previous key from every query (the diagonal stays open)."""

    def score_bias(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        distance = q_pos[:, None] - k_pos[None, :]  # (Tq, Tk)
        hidden = (distance < 0) | (distance == 1)
        return torch.zeros(distance.shape).masked_fill(hidden, -math.inf)[None]


def own_values(attn: VanillaAttention, x: Tensor) -> Tensor:
    """What OnlySelf must compute: softmax over one key is 1, so y_i = proj(v_i)."""
    B, T, C = x.shape
    _, _, v = attn.split_heads(x)  # (B, H, T, D)
    return attn.proj(v.transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("T", [1, 9])
def test_overriding_allowed_is_honoured_on_the_fast_path(T: int) -> None:
    torch.manual_seed(0)
    attn = OnlySelf(**SHAPE).eval()
    x = torch.randn(2, T, 32)
    torch.testing.assert_close(attn(x)[0], own_values(attn, x))
    shown, att = attn(x, return_attn=True)
    torch.testing.assert_close(shown, own_values(attn, x))
    assert torch.equal(att[0, 0], torch.eye(T))


def test_overriding_allowed_is_honoured_when_decoding() -> None:
    torch.manual_seed(0)
    attn = OnlySelf(**SHAPE).eval()
    x = torch.randn(2, 9, 32)
    cache = attn.new_cache()
    steps = [attn(x[:, :1], cache=cache)[0]]  # a single token: SDPA's no-mask path if plain
    steps += [attn(x[:, t : t + 1], cache=cache)[0] for t in range(1, 9)]
    torch.testing.assert_close(torch.cat(steps, 1), own_values(attn, x))


def test_overriding_score_bias_is_honoured() -> None:
    torch.manual_seed(0)
    attn = NoRecentKeys(**SHAPE).eval()
    x = torch.randn(1, 9, 32)
    fast = attn(x)[0]
    shown, att = attn(x, return_attn=True)
    torch.testing.assert_close(fast, shown)
    assert (att[0, :, 1:].diagonal(dim1=-2, dim2=-1) == 0).all()  # key i-1 of query i hidden
    plain = VanillaAttention(**SHAPE).eval()
    plain.load_state_dict(attn.state_dict())
    assert not torch.allclose(fast, plain(x)[0])


def test_an_unchanged_subclass_keeps_the_causal_fast_path() -> None:
    class Renamed(VanillaAttention):
        pass

    assert Renamed.is_plain_causal and VanillaAttention.is_plain_causal
    assert not OnlySelf.is_plain_causal and not NoRecentKeys.is_plain_causal
