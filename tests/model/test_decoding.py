"""Incremental decoding (KV caches, recurrent states) gives the logits of full recomputation,
for every attention variant, before and after the context passes block_size."""

from __future__ import annotations

import pytest
import torch
from helpers import small_attention

from attn_lightning.attention.kv_cache import KVCache
from attn_lightning.attention.registry import variant_names
from attn_lightning.bench import generation
from attn_lightning.model.decoding import IncrementalDecoder
from attn_lightning.model.gpt import GPT

SMALL = {"chunk_size": 4, "num_segments": 4, "num_landmarks": 4, "block": 4, "window": 5}
BLOCK = 16


def gpt(variant: str, pos_embedding: str = "learned", **overrides) -> GPT:
    attention = small_attention(variant, SMALL, **overrides)
    torch.manual_seed(0)
    return GPT(65, 3, 4, 32, BLOCK, attention, pos_embedding=pos_embedding).eval()


@pytest.mark.parametrize("variant", variant_names())
@pytest.mark.parametrize("pos_embedding", ["learned", "none"])
def test_incremental_equals_full_recomputation(variant: str, pos_embedding: str) -> None:
    model = gpt(variant, pos_embedding)
    sequence = torch.randint(65, (2, 2 * BLOCK + 5))
    decoder = IncrementalDecoder(model)
    with torch.no_grad():
        for T in range(3, sequence.size(1) + 1):  # prompt of 3, then one token at a time
            full = model.full_logits(sequence[:, :T])
            torch.testing.assert_close(decoder(sequence[:, :T]), full, rtol=1e-4, atol=1e-5)


def test_incremental_feeds_one_token_while_the_context_fits() -> None:
    model = gpt("vanilla")
    decoder = IncrementalDecoder(model)
    sequence = torch.randint(65, (1, BLOCK))
    decoder(sequence[:, :5])
    caches = decoder.caches
    decoder(sequence[:, :6])
    assert decoder.caches is caches and caches[0].length == 6 and caches[0].k.size(2) == 6


@pytest.mark.parametrize("variant", ["vanilla", "performer", "nystrom"])
def test_generate_incremental_equals_full(variant: str) -> None:
    model = gpt(variant, rope=True)
    prompt = torch.randint(65, (2, 7))
    fast = model.generate(prompt, 30, temperature=0)
    slow = model.generate(prompt, 30, temperature=0, incremental=False)
    assert torch.equal(fast, slow)
    sampled = model.generate(prompt, 30, generator=torch.Generator().manual_seed(1))
    again = model.generate(
        prompt, 30, generator=torch.Generator().manual_seed(1), incremental=False
    )
    assert torch.equal(sampled, again)


@pytest.mark.parametrize(
    ("variant", "kv_heads", "kept"), [("mqa", 1, 10), ("gqa", 2, 10), ("sliding_window", 4, 5)]
)
def test_cache_sizes(variant: str, kv_heads: int, kept: int) -> None:
    model = gpt(variant)
    decoder = IncrementalDecoder(model)
    decoder(torch.randint(65, (3, 10)))
    cache = decoder.caches[0]
    assert isinstance(cache, KVCache)
    assert cache.k.shape == (3, kv_heads, kept, 8)


def test_recurrent_state_does_not_grow() -> None:
    model = gpt("linear")
    decoder = IncrementalDecoder(model)
    sequence = torch.randint(65, (1, BLOCK - 1))
    decoder(sequence[:, :2])
    shape = decoder.caches[0].S.shape
    decoder(sequence)
    assert decoder.caches[0].length == BLOCK - 1
    assert decoder.caches[0].S.shape == shape == (1, 4, 8, 8)


def test_generation_benchmark_prints_a_row_per_variant(capsys: pytest.CaptureFixture) -> None:
    argv = ["--attention", "vanilla", "performer", "--prompt-len", "4", "--new-tokens", "6"]
    generation.main([*argv, "--repeats", "1", "--block-size", "16"])
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| vanilla")] + [
        line for line in table.splitlines() if line.startswith("| performer")
    ]
    assert len(rows) == 2
    assert all(row.endswith("| yes |") for row in rows), table
    # the default model (4 layers, 4 heads of 32) at block 16, fp32: vanilla's k and v of 16
    # positions; the Performer's S (111 x 32) and z (111) per head, 111 = round(32 ln 32)
    vanilla_kib = 4 * 2 * 4 * 16 * 32 * 4 / 1024
    performer_kib = 4 * 4 * (111 * 32 + 111) * 4 / 1024
    assert [row.split("|")[5].strip() for row in rows] == [
        f"{vanilla_kib:.1f}",
        f"{performer_kib:.1f}",
    ]


def test_kv_cache_owns_its_storage_and_appends_in_place() -> None:
    """After the prefill the cache holds none of the prompt's fused q/k/v tensor (only its
    own storage of block_size positions), and a new token is written into that storage."""
    model = gpt("vanilla")
    decoder = IncrementalDecoder(model)
    sequence = torch.randint(65, (2, 8))
    with torch.no_grad():
        decoder(sequence[:, :5])
        cache = decoder.caches[0]
        storage = (cache.k.untyped_storage().data_ptr(), cache.v.untyped_storage().data_ptr())
        assert cache.k.untyped_storage().nbytes() == 2 * 4 * BLOCK * 8 * 4  # (B, H, block, D)
        assert cache.k.untyped_storage().data_ptr() != cache.v.untyped_storage().data_ptr()
        kept = cache.k.clone()
        decoder(sequence[:, :6])
    assert (cache.k.untyped_storage().data_ptr(), cache.v.untyped_storage().data_ptr()) == storage
    assert cache.k.shape == (2, 4, 6, 8) and torch.equal(cache.k[:, :, :5], kept)
