"""RoPE (the base's `rope` option; conf/attention/rotary.yaml is vanilla attention with it on):
scores depend on relative positions only."""

from __future__ import annotations

import torch

from attn_lightning.attention.registry import build_attention
from attn_lightning.attention.rope import RotaryEmbedding
from attn_lightning.attention.vanilla import VanillaAttention


def test_scores_depend_only_on_relative_position() -> None:
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=16, max_len=64)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m: int, n: int) -> torch.Tensor:
        qm, kn = rope(q, torch.tensor([m])), rope(k, torch.tensor([n]))
        return (qm * kn).sum()

    for shift in (1, 7, 30):
        torch.testing.assert_close(score(10 + shift, 3 + shift), score(10, 3))
    assert not torch.allclose(score(10, 3), score(10, 4))  # but they do depend on it
    torch.testing.assert_close(rope(q, torch.tensor([0])), q)  # position 0: no rotation


def test_rotary_attention_is_translation_invariant_without_positions() -> None:
    """Same tokens at shifted absolute positions give the same scores (via a KV cache)."""
    torch.manual_seed(0)
    attn = build_attention("rotary", n_embd=32, n_head=4, block_size=32).eval()
    x = torch.randn(1, 5, 32)
    direct = attn(x)[0]
    cache = attn.new_cache()
    cache.length = 9  # start at absolute position 9, with no earlier keys to look at
    shifted = attn(x, cache=cache)[0]
    torch.testing.assert_close(shifted, direct)


def test_rotary_variant_rotates_what_vanilla_does_not() -> None:
    """Guard for the test above (which a layer without positions passes too): with the same
    weights, the rotary variant's output differs from plain softmax attention's."""
    torch.manual_seed(0)
    rotary = build_attention("rotary", n_embd=32, n_head=4, block_size=32).eval()
    vanilla = VanillaAttention(n_embd=32, n_head=4, block_size=32).eval()
    vanilla.load_state_dict(rotary.state_dict())
    x = torch.randn(1, 5, 32)
    assert not torch.allclose(rotary(x)[0], vanilla(x)[0])
