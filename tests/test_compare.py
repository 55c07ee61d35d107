"""Sweep comparisons as a user gets them: the report a multirun leaves in its sweep dir, a
failing job that fails alone, and `python -m attn_lightning.compare` rebuilding the report."""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

import pytest
from helpers import TINY, run_cli, run_module

PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = [
    "loss_curves.png",
    "final_loss_bar.png",
    "attention_patterns.png",
    "attention_entropy.png",
    "attention_distance.png",
    "attention_masks.png",
    "quality_vs_state_size.png",
    "quality_vs_tokens_per_sec.png",
    "quality_vs_width.png",
]


def logged(run_dir: Path) -> dict[str, list[float]]:
    """Every metric's logged values, in order, from the run's own csv/metrics.csv."""
    values: dict[str, list[float]] = {}
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            for name, cell in row.items():
                if cell:
                    values.setdefault(name, []).append(float(cell))
    return values


def rows(sweep: Path) -> dict[str, dict[str, str]]:
    with open(sweep / "comparison.csv", newline="") as f:
        return {row["job"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def sweep(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cwd, sweep dir relative to it) of a 2-job TINY sweep over attention variants."""
    cwd = tmp_path_factory.mktemp("sweep")
    run_cli("attn_lightning", ["-m", *TINY, "attention=vanilla,linear"], cwd, data_dir)
    (sweep_dir,) = (cwd / "outputs" / "multirun").glob("*/*")
    return cwd, sweep_dir.relative_to(cwd)


def test_sweep_dir_gets_a_row_per_job_matching_each_jobs_own_log(sweep):
    cwd, sweep_dir = sweep
    table = rows(cwd / sweep_dir)
    assert sorted(table) == ["0", "1"]
    for job, option in (("0", "vanilla"), ("1", "linear")):
        row, log = table[job], logged(cwd / sweep_dir / job)
        assert row["status"] == "completed" and row["error"] == ""
        assert row["attention"] == option  # the variant by its config option, as a user names it
        assert row["overrides"].endswith(f"attention={option}")
        report = (cwd / sweep_dir / job / "report.md").read_text()
        assert report.startswith(f"# Run report: {option}\n")
        for column, metric in (
            ("train_loss", "train/loss"),
            ("val_loss", "val/loss"),
            ("val_ppl", "val/ppl"),
            ("test_loss", "test/loss"),
            ("peak_memory_mib", "memory/rss_peak_mib"),
        ):
            assert float(row[column]) == pytest.approx(log[metric][-1], rel=1e-9), column
        median = statistics.median(log["train/tokens_per_sec"])
        assert float(row["tokens_per_sec_median"]) == pytest.approx(median, rel=1e-9)
        assert int(row["steps"]) == 12 and float(row["wall_time_s"]) > 0
        assert int(row["params"]) > 0 and row["differs_from_others"] == ""
    # same model config, and neither variant has parameters of its own
    assert table["0"]["params"] == table["1"]["params"]
    assert float(table["1"]["params_delta_pct"]) == 0.0
    # one process (Hydra's basic launcher): job 1's peak RSS would include job 0's unless the
    # memory monitor reset it when job 1's fit began (Linux), which its summary records
    scope = json.loads((cwd / sweep_dir / "1" / "summary.json").read_text())["peak_memory_scope"]
    shared = {"run": "False", "process": "True"}[scope]
    assert [table[j]["peak_memory_includes_earlier_jobs"] for j in "01"] == ["False", shared]
    assert scope == "run" or sys.platform != "linux"
    text = (cwd / sweep_dir / "comparison.md").read_text()
    assert "0 attention=vanilla" in text and "1 attention=linear" in text
    assert "Every run shares" in text and "not like with like" not in text


def test_sweep_dir_gets_every_figure(sweep):
    cwd, sweep_dir = sweep
    for name in FIGURES:
        assert (cwd / sweep_dir / name).read_bytes()[:8] == PNG, name


def test_compare_cli_rebuilds_the_same_table(sweep, data_dir: Path):
    cwd, sweep_dir = sweep
    table = cwd / sweep_dir / "comparison.csv"
    before = table.read_text()
    table.unlink()
    (cwd / sweep_dir / "attention_masks.png").unlink()
    run_cli("attn_lightning.compare", [str(sweep_dir)], cwd, data_dir)
    assert table.read_text() == before
    assert (cwd / sweep_dir / "attention_masks.png").read_bytes()[:8] == PNG


@pytest.mark.slow  # one more training run for an edge of the table
def test_the_comparison_needs_no_optional_callback(data_dir: Path, tmp_path: Path):
    """Without the run report the table still has the variant, its parameters and steps
    (train() records them); only the run report's own figures have no data."""
    args = [*TINY, "attention=mqa", "test=false", "~callbacks.run_report"]
    run_cli("attn_lightning", args, tmp_path, data_dir)
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    assert not (run_dir / "report.md").exists()  # the run report really did not run
    out = tmp_path / "comparison"
    run_cli("attn_lightning.compare", [str(run_dir), "--output-dir", str(out)], tmp_path, data_dir)
    (row,) = rows(out).values()
    assert row["attention"] == "mqa"  # not the class it shares with gqa and vanilla
    assert int(row["params"]) > 0 and float(row["params_delta_pct"]) == 0.0
    assert int(row["steps"]) == 12
    assert float(row["val_loss"]) == pytest.approx(logged(run_dir)["val/loss"][-1], rel=1e-9)
    text = (out / "comparison.md").read_text()
    assert "No run recorded its parameter count" not in text and "(mqa)" in text


def test_a_failing_job_fails_alone_and_is_reported(data_dir: Path, tmp_path: Path):
    # the failing job comes first: the sweep must go on to the next one
    args = ["-m", *TINY, "test=false", "model.n_head=3,2"]  # n_embd=32 is not divisible by 3
    proc = run_module("attn_lightning", args, tmp_path, data_dir)
    assert proc.returncode == 2, proc.stderr[-3000:]  # a job's bad config, after every job ran
    assert "error: model.n_embd=32 is not divisible by model.n_head=3" in proc.stdout + proc.stderr
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    table = rows(sweep_dir)
    failed, completed = table["0"], table["1"]
    assert failed["status"] == "failed"
    error = "ConfigError: model.n_embd=32 is not divisible by model.n_head=3"
    assert failed["error"].startswith(error)
    assert failed["val_loss"] == "" and failed["params"] == ""
    assert completed["status"] == "completed" and completed["error"] == ""
    assert float(completed["val_loss"]) == pytest.approx(logged(sweep_dir / "1")["val/loss"][-1])
    assert int(completed["params"]) > 0 and completed["test_loss"] == ""
    text = (sweep_dir / "comparison.md").read_text()
    assert "1 completed, 1 failed" in text and "ConfigError" in text
    for name in FIGURES:
        assert (sweep_dir / name).read_bytes()[:8] == PNG, name


def test_compare_cli_refuses_bad_input_with_a_message(data_dir: Path, tmp_path: Path):
    for args, message in (
        ([str(tmp_path / "missing")], "is not a directory"),
        ([str(tmp_path)], "holds no runs"),
    ):
        proc = run_module("attn_lightning.compare", args, tmp_path, data_dir)
        assert proc.returncode == 2
        assert proc.stderr.startswith("error: ") and message in proc.stderr
        assert "Traceback" not in proc.stderr
