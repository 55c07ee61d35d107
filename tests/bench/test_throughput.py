"""The throughput benchmark compares like with like: same model, same batches, same updates."""

from __future__ import annotations

import pytest
from helpers import use_data_dir

from attn_lightning.bench.throughput import measure

TINY = [
    "trainer=cpu",
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "data.block_size=16",
    "data.batch_size=4",
    "~callbacks.progress_bar",
]


def test_lightning_and_plain_loops_compute_identical_losses(data_dir, monkeypatch):
    use_data_dir(monkeypatch, data_dir)
    result = measure(TINY, steps=8, block=2, warmup_blocks=1)
    plain, lightning = result["plain"], result["lightning"]
    assert len(result["pair_ratios"]) == 3 and all(r > 0 for r in result["pair_ratios"])
    assert plain["final_loss"] == lightning["final_loss"]  # both did the same 8 updates
    for r in (plain, lightning):
        assert r["tokens_per_sec"] > 0
        assert r["ms_per_step"] * r["tokens_per_sec"] / 1000 == pytest.approx(4 * 16)


def test_a_different_seed_changes_the_losses(data_dir, monkeypatch):
    """Guards the test above: identical losses must come from identical work, not a constant."""
    use_data_dir(monkeypatch, data_dir)
    a = measure(TINY, steps=4, block=2, warmup_blocks=0)["plain"]["final_loss"]
    b = measure([*TINY, "seed=7"], steps=4, block=2, warmup_blocks=0)["plain"]["final_loss"]
    assert a != b
