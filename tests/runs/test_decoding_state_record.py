"""The decoding state in a run's record: train() writes the bytes per sequence at the block size
to summary.json, and the sweep comparison shows them, per run and per arm of its protocol; a
cache that cannot be measured costs the record that field only."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from attn_lightning.attention.vanilla import VanillaAttention
from attn_lightning.comparison.report import write_comparison
from attn_lightning.comparison.runs import load_runs
from attn_lightning.config import CONFIG_DIR
from attn_lightning.model.gpt import GPT
from attn_lightning.runs.record import decoding_state, read_record
from attn_lightning.train import train

CALLBACKS_OFF = (  # every callback of conf/callbacks/default.yaml: one bare training step
    *("progress_bar", "model_summary", "model_checkpoint", "periodic_checkpoint"),
    *("final_validation", "interrupt_checkpoint", "lr_monitor", "memory", "text_sample"),
    *("task_examples", "attention_maps", "attention_stats", "run_report", "hparams"),
    "scalars_layout",
)


def test_training_records_the_decoding_state_and_the_comparison_shows_it(tmp_path: Path):
    """One step of a 2-layer hybrid (vanilla, then linear) on the copy task (block 56)."""
    run_dir = tmp_path / "sweep" / "0"
    overrides = [
        "data=copy",
        "trainer=cpu",
        "model.n_layer=2",
        "model.n_head=2",
        "model.n_embd=16",
        "data.batch_size=4",
        "data.val_size=4",
        "data.eval_batch_size=4",
        "data.test_size=4",
        "data.test_long_size=4",
        "trainer.max_steps=1",
        "+trainer.limit_val_batches=0",
        "+trainer.enable_checkpointing=false",
        "test=false",
        "logger={}",
        f"paths.output_dir={run_dir}",
        "+attention@layer_attention.1=linear",
        *(f"~callbacks.{name}" for name in CALLBACKS_OFF),
    ]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        train(compose("train", overrides=overrides))
    record = read_record(run_dir)
    heads, head_dim, T = 2, 8, 56
    kv_cache = 2 * heads * T * head_dim * 4  # layer 0: k and v of every position, fp32
    linear_state = (heads * head_dim * head_dim + heads * head_dim) * 4  # layer 1: S and z
    assert record.decoding_state_context == T
    assert record.decoding_state_bytes == kv_cache + linear_state == 7744

    write_comparison(load_runs([tmp_path / "sweep"]), tmp_path / "report", ["sweep"])
    table = (tmp_path / "report" / "comparison.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| run"))
    assert "state KiB/seq @T" in header
    assert "7.6 @56" in table  # 7744 / 1024 = 7.5625 KiB at T = 56
    with open(tmp_path / "report" / "comparison.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert float(row["decoding_state_kib"]) == pytest.approx(7744 / 1024)
    assert row["decoding_state_context"] == "56"
    with open(tmp_path / "report" / "arms.csv", newline="") as f:
        (arm,) = csv.DictReader(f)  # the protocol's one arm carries it too
    assert float(arm["decoding_state_kib"]) == pytest.approx(7744 / 1024)


class BrokenCache(VanillaAttention):
    def _new_core_cache(self):
        raise RuntimeError("no cache here")


def test_an_unmeasurable_cache_leaves_the_fields_empty_with_a_warning(caplog):
    torch.manual_seed(0)
    model = GPT(13, 1, 2, 16, 8, BrokenCache)
    with caplog.at_level(logging.WARNING, logger="attn_lightning.runs.record"):
        fields = decoding_state(model)
    assert fields == {"decoding_state_bytes": None, "decoding_state_context": None}
    assert "decoding state not recorded: RuntimeError: no cache here" in caplog.text
