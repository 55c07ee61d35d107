"""Causal Linformer: refuses settings it cannot make causal; with one position per segment and
identity compression it is exactly softmax attention (the compression is the only change)."""

from __future__ import annotations

import pytest
import torch

from attn_lightning.attention.linformer import LinformerAttention
from attn_lightning.attention.vanilla import VanillaAttention

SHAPE = {"n_embd": 32, "n_head": 4, "block_size": 32}


def test_refuses_segments_not_dividing_block_size() -> None:
    with pytest.raises(ValueError, match=r"dividing model\.block_size"):
        LinformerAttention(**SHAPE, num_segments=5)


def test_unit_segments_with_identity_projection_is_softmax() -> None:
    torch.manual_seed(0)
    vanilla = VanillaAttention(**SHAPE).eval()
    linformer = LinformerAttention(**SHAPE, num_segments=32).eval()
    linformer.load_state_dict(vanilla.state_dict(), strict=False)
    with torch.no_grad():
        linformer.key_compression.fill_(1.0)
        linformer.value_compression.fill_(1.0)
    x = torch.randn(2, 32, 32)
    torch.testing.assert_close(linformer(x)[0], vanilla(x)[0])


def test_past_segment_seen_only_through_its_summary() -> None:
    """A query in segment 2 weighs the tokens of segment 0 in proportion to the value
    compression F (one summary)."""
    torch.manual_seed(0)
    attn = LinformerAttention(**SHAPE, num_segments=4).eval()  # segments of 8
    att = attn(torch.randn(1, 32, 32), return_attn=True)[1][0, 0]
    row = att[20, :8]
    ratio = row / attn.value_compression[0].detach()
    torch.testing.assert_close(ratio, ratio[0].expand(8))
