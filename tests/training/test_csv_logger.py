"""metrics.csv: atomic rewrites, history kept on resume, an earlier run's rows replaced."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from attn_lightning.training.csv_logger import ResumableCSVLogger


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def logger_with(tmp_path: Path, steps: range, resume_step: int | None = None):
    logger = ResumableCSVLogger(tmp_path, name="csv", version="")
    if resume_step is not None:
        logger.resume_at(resume_step)
    for step in steps:
        logger.log_metrics({"train/loss": float(step)}, step=step)
    logger.finalize("success")  # the end of the run writes what is pending
    return logger


def test_resume_keeps_rows_before_the_checkpoint_and_replaces_the_rest(tmp_path):
    first = logger_with(tmp_path, range(0, 8))
    first.log_metrics({"val/loss": 1.5}, step=3)  # a new column: the header grows
    first.log_metrics({"val/loss": 1.2}, step=7)
    first.finalize("success")
    logger_with(tmp_path, range(5, 10), resume_step=5)
    table = rows(tmp_path / "csv" / "metrics.csv")
    assert [int(r["step"]) for r in table if r["train/loss"]] == list(range(10))
    assert [r["val/loss"] for r in table if r.get("val/loss")] == ["1.5"]  # 7's is redone


def test_a_fresh_run_replaces_an_earlier_runs_rows(tmp_path):
    logger_with(tmp_path, range(0, 8))
    logger_with(tmp_path, range(0, 3))
    assert [r["step"] for r in rows(tmp_path / "csv" / "metrics.csv")] == ["0", "1", "2"]


def test_a_kill_during_a_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    logger = logger_with(tmp_path, range(0, 4))
    path = tmp_path / "csv" / "metrics.csv"
    before = path.read_bytes()

    def dies_before_the_rename(fd: int) -> None:
        raise KeyboardInterrupt  # the new rows are in the temp file, not yet renamed

    monkeypatch.setattr(os, "fsync", dies_before_the_rename)
    logger.log_metrics({"train/loss": 9.0}, step=4)
    with pytest.raises(KeyboardInterrupt):
        logger.finalize("success")
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["metrics.csv"]  # no partial file left


def test_rows_reach_the_disk_each_flush_interval_at_each_checkpoint_and_at_the_end(tmp_path):
    """Written every flush_logs_every_n_steps steps however often the trainer calls save()
    (it calls it after every log), at each checkpoint (a resume keeps the rows before the
    checkpoint's step, so they must be on disk) and at the end."""
    logger = ResumableCSVLogger(tmp_path, name="csv", version="", flush_logs_every_n_steps=10)
    path = tmp_path / "csv" / "metrics.csv"

    def on_disk() -> list[int]:
        return [int(r["step"]) for r in rows(path)] if path.exists() else []

    for step in range(25):
        logger.log_metrics({"train/loss": float(step)}, step=step)
        logger.save()  # as the trainer does after each log
        if step == 8:
            assert on_disk() == []
    assert on_disk() == list(range(20))  # written at steps 9 and 19
    logger.after_save_checkpoint(None)  # Lightning logs the checkpointed batch's row after it
    logger.log_metrics({"train/loss": 0.5}, step=25)
    logger.save()
    assert on_disk() == list(range(26))
    logger.log_metrics({"train/loss": 0.5}, step=26)
    logger.save()
    assert on_disk() == list(range(26))  # not due
    logger.finalize("success")
    assert on_disk() == list(range(27))
