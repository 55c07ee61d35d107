from __future__ import annotations

import torch

from attn_lightning.attention.alibi import ALiBiAttention, alibi_slopes


def test_power_of_two_slopes() -> None:
    expected = torch.tensor([2.0**-h for h in range(1, 9)])  # 1/2, 1/4, ..., 1/256
    torch.testing.assert_close(alibi_slopes(8), expected)
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([2.0**-h for h in (2, 4, 6, 8)]))


def test_non_power_of_two_slopes_follow_the_paper() -> None:
    # 6 heads: the 4 slopes of 4 heads, then every other slope of 8 heads (1/2, 1/8)
    expected = torch.tensor([2.0**-h for h in (2, 4, 6, 8, 1, 3)])
    torch.testing.assert_close(alibi_slopes(6), expected)


def test_bias_is_linear_in_distance() -> None:
    attn = ALiBiAttention(n_embd=32, n_head=4, block_size=32)
    pos = torch.arange(6)
    bias = attn.score_bias(pos, pos)  # (H, T, T)
    assert bias.shape == (4, 6, 6)
    torch.testing.assert_close(bias[1, 5, 2], torch.tensor(-3 * 2.0**-4))
    assert torch.isinf(bias[0, 2, 3]) and bias[0, 3, 3] == 0
