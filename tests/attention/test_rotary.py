from __future__ import annotations

import pytest
import torch

from attn_lightning.attention.rope import RotaryEmbedding
from attn_lightning.attention.rotary import RotaryAttention


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
    attn = RotaryAttention(n_embd=32, n_head=4, block_size=32).eval()
    x = torch.randn(1, 5, 32)
    direct = attn(x)[0]
    cache = attn.new_cache()
    cache.length = 9  # start at absolute position 9, with no earlier keys to look at
    shifted = attn(x, cache=cache)[0]
    torch.testing.assert_close(shifted, direct)


def test_rotary_refuses_rope_off() -> None:
    with pytest.raises(ValueError, match="vanilla"):
        RotaryAttention(n_embd=32, n_head=4, block_size=32, rope=False)
