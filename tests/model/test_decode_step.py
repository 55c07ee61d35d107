"""The decoding step (`GPT.extend` -> `Block.step` -> `CausalSelfAttention.step`) fed in
chunks of uneven sizes: every new position's logits equal full recomputation's, so the
one-token path (views without transposes, in-place cache and state writes) and the
several-token path after a prefill (KV cache appended by several slots, chunked linear
attention continuing a recurrent state) agree with each other and with the training path."""

from __future__ import annotations

import pytest
import torch
from helpers import small_attention

from attn_lightning.model.gpt import GPT

SMALL = {"chunk_size": 4, "window": 5}
CHUNKS = [3, 1, 4, 1, 1, 5, 1]  # prompt of 3, single tokens and longer runs, mixed
VARIANTS = ["vanilla", "gqa", "mqa", "rotary", "alibi", "sliding_window", "linear", "performer"]


def gpt(variant: str, **overrides) -> GPT:
    torch.manual_seed(0)
    attention = small_attention(variant, SMALL, **overrides)
    return GPT(65, 3, 4, 32, sum(CHUNKS), attention).eval()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("short_conv", [0, 3])
def test_chunked_decoding_equals_full_recomputation(variant: str, short_conv: int) -> None:
    model = gpt(variant, short_conv=short_conv)
    sequence = torch.randint(65, (2, sum(CHUNKS)))
    caches = model.new_caches()
    with torch.inference_mode():
        full = model(sequence).logits  # (B, T, V)
        start = 0
        for size in CHUNKS:
            chunk = model(sequence[:, start : start + size], caches=caches).logits
            torch.testing.assert_close(chunk, full[:, start : start + size], rtol=1e-4, atol=1e-5)
            start += size
    assert all(cache.length == sum(CHUNKS) for cache in caches)


@pytest.mark.parametrize("variant", ["vanilla", "linear"])
def test_greedy_tokens_equal_full_recomputation_in_a_batch(variant: str) -> None:
    """Greedy generation from two prompts at once: the same tokens as recomputing the whole
    context for every new token (the reference, `incremental=False`)."""
    model = gpt(variant)
    prompt = torch.randint(65, (2, 4))
    fast = model.generate(prompt, sum(CHUNKS) - 4, temperature=0)
    slow = model.generate(prompt, sum(CHUNKS) - 4, temperature=0, incremental=False)
    assert torch.equal(fast, slow)
