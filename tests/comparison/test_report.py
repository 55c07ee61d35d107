"""The comparison table on synthetic runs: parameter reference, like-with-like flags, failed and
incomplete runs, CSV and figures; and how saved run dirs are found and read."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from attn_lightning.comparison.columns import (
    COLUMNS,
    Column,
    comparison_rows,
    differences,
    render_csv,
)
from attn_lightning.comparison.report import render_markdown, write_comparison
from attn_lightning.comparison.runs import Run, load_runs
from attn_lightning.errors import UserError
from attn_lightning.runs.record import RunRecord, update_record

PNG = b"\x89PNG\r\n\x1a\n"
DATA = {"data.batch_size": 12, "data.block_size": 64, "seed": 1337, "trainer.max_steps": 100}
VANILLA_CLASS = "attn_lightning.attention.vanilla.VanillaAttention"  # gqa, mqa, rotary too


def record(option: str, params: int, val_loss: float, target: str = VANILLA_CLASS, **comparable):
    return RunRecord(
        status="completed",
        attention_option=option,
        attention={"_target_": target},
        params=params,
        step=100,
        metrics={"val/loss": val_loss, "train/loss": val_loss + 0.1},
        comparable=DATA | comparable,
        wall_time_s=12.5,
        attention_stats={"entropy": [[1.0, 2.0], [3.0, 4.0]], "distance": [[1.0, 1.0]] * 2},
        attention_pattern=[[1.0, 0.0], [0.5, 0.5]],
        attention_mask=["10", "11"],
    )


def make_runs() -> list[Run]:
    linear = "attn_lightning.attention.linear.LinearAttention"
    return [
        Run("0", Path("0"), record("vanilla", 1000, 2.0), ["attention=vanilla"]),
        Run("1", Path("1"), record("gqa", 900, 2.1), ["attention=gqa"]),
        Run(
            "2",
            Path("2"),
            record("linear", 1000, 2.2, linear, **{"data.batch_size": 24}),
            ["attention=linear"],
            series={"train/tokens_per_sec": [(9, 100.0), (19, 300.0), (29, 200.0)]},
        ),
        Run(
            "3",
            Path("3"),
            RunRecord(status="failed", error="ConfigError: bad", comparable=DATA),
            ["attention=performer"],
        ),
        Run("4", Path("4"), None, ["attention=nystrom"]),
    ]


def test_rows_show_parameters_against_vanilla_and_how_each_run_ended():
    rows = {row["job"]: row for row in comparison_rows(make_runs())}
    assert rows["0"]["params_delta_pct"] == pytest.approx(0.0)
    assert rows["1"]["params_delta_pct"] == pytest.approx(-10.0)
    assert rows["2"]["val_loss"] == 2.2 and rows["2"]["train_loss"] == pytest.approx(2.3)
    assert rows["2"]["tokens_per_sec_median"] == 200.0  # median of the logged series
    assert rows["3"]["status"] == "failed" and rows["3"]["error"] == "ConfigError: bad"
    assert rows["3"]["val_loss"] is None
    assert rows["4"]["status"] == "incomplete" and "no summary.json" in rows["4"]["error"]


def test_reference_is_the_largest_vanilla_run_else_the_largest():
    runs = make_runs()[1:3]  # no vanilla: the largest (linear, 1000) is the reference
    rows = {row["job"]: row for row in comparison_rows(runs)}
    assert rows["2"]["params_delta_pct"] == pytest.approx(0.0)
    assert rows["1"]["params_delta_pct"] == pytest.approx(-10.0)


def test_runs_that_differ_from_the_majority_are_flagged():
    runs = make_runs()
    flags, differing = differences(runs)
    assert flags["2"] == ["data.batch_size"]
    assert all(not flags[label] for label in ("0", "1", "3", "4"))
    assert set(differing) == {"data.batch_size"}
    rows = comparison_rows(runs)
    assert [r["differs_from_others"] for r in rows] == ["", "", "data.batch_size", "", ""]
    text = render_markdown(runs, rows, ["sweep"])
    assert "not like with like" in text and "⚠ differs: data.batch_size" in text


def test_a_tie_flags_every_run_and_steps_trained_count():
    a = Run("a", Path("a"), record("vanilla", 10, 1.0, seed=1), [])
    b = Run("b", Path("b"), record("vanilla", 10, 1.0, seed=2), [])
    b.record.step = 50  # stopped early
    flags, _ = differences([a, b])
    assert flags == {"a": ["seed", "steps trained"], "b": ["seed", "steps trained"]}
    same = [Run(x, Path(x), record("vanilla", 10, 1.0), []) for x in "ab"]
    assert differences(same)[1] == {}
    assert "Every run shares" in render_markdown(same, comparison_rows(same), ["s"])


def test_csv_has_one_row_per_run_and_a_column_per_spec_entry():
    rows = comparison_rows(make_runs())
    parsed = list(csv.DictReader(io.StringIO(render_csv(rows))))
    assert list(parsed[0]) == [c.name for c in COLUMNS]
    assert len(set(parsed[0])) == len(COLUMNS)  # no column twice
    assert [r["job"] for r in parsed] == ["0", "1", "2", "3", "4"]
    assert float(parsed[0]["val_loss"]) == 2.0 and parsed[3]["val_loss"] == ""


def markdown_results(text: str) -> tuple[list[str], list[list[str]]]:
    """The results table of comparison.md: (header, rows of cells)."""
    table = text.split("## Results\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    return cells[0], cells[2:]


def test_one_column_spec_drives_the_csv_and_the_markdown_table():
    runs = make_runs()
    lr = Column("lr", lambda run, _: 0.002 if run.record else None, "learning rate", ".0e")
    csv_only = Column("note", lambda run, _: "x")
    never = Column("unused", lambda run, _: None, "never shown")
    columns = (*COLUMNS, lr, csv_only, never)
    rows = comparison_rows(runs, columns)
    header = next(csv.reader(io.StringIO(render_csv(rows, columns))))
    assert header[-3:] == ["lr", "note", "unused"]
    md_header, md_rows = markdown_results(render_markdown(runs, rows, ["s"], columns))
    assert md_header[-1] == "learning rate"  # no header: CSV only; no value anywhere: left out
    assert "note" not in md_header and "never shown" not in md_header
    assert [r[-1] for r in md_rows] == ["2e-03"] * 4 + [""]
    # without the added columns, the default spec's markdown has none of them
    plain_header, _ = markdown_results(render_markdown(runs, comparison_rows(runs), ["s"]))
    assert plain_header == md_header[:-1]


def test_variants_sharing_a_class_are_told_apart_by_their_option_names():
    runs = [
        Run("0", Path("0"), record("vanilla", 1000, 2.0), []),
        Run("1", Path("1"), record("gqa", 900, 2.1), []),
        Run("2", Path("2"), record("mqa", 850, 2.2), []),
        Run("3", Path("3"), record("rotary", 1200, 1.9), []),  # larger, same class as vanilla
    ]
    rows = comparison_rows(runs)
    assert [r["attention"] for r in rows] == ["vanilla", "gqa", "mqa", "rotary"]
    # the reference is the vanilla option, not the largest run of vanilla's class
    assert [r["params_delta_pct"] for r in rows] == pytest.approx([0.0, -10.0, -15.0, 20.0])
    _, md_rows = markdown_results(render_markdown(runs, rows, ["s"]))
    assert [r[2] for r in md_rows] == ["vanilla", "gqa", "mqa", "rotary"]  # run, status, attention


def test_records_without_an_option_or_with_a_damaged_field_still_compare(tmp_path: Path):
    """summary.json with the class but no option name, a key that is no field, a bad field."""
    record = {
        "status": "completed",
        "error": None,
        "params": 1000.0,
        "step": 100,
        "attention": {"_target_": VANILLA_CLASS, "_partial_": True},
        "metrics": {"val/loss": 2.0},
        "comparable": DATA,
        "unknown_key": [1, 2],
    }
    for job, params in (("0", 1000.0), ("1", "damaged")):
        write_run(tmp_path / job, [f"seed={job}"], None)
        (tmp_path / job / "summary.json").write_text(json.dumps(record | {"params": params}))
    runs = load_runs([tmp_path])
    rows = comparison_rows(runs)
    assert [r["attention"] for r in rows] == ["VanillaAttention"] * 2  # the class
    assert rows[0]["params"] == 1000 and rows[0]["params_delta_pct"] == 0.0
    assert rows[1]["params"] is None and rows[1]["val_loss"] == 2.0  # one bad field only
    update_record(tmp_path / "0", status="failed")
    kept = json.loads((tmp_path / "0" / "summary.json").read_text())
    assert kept["status"] == "failed" and kept["params"] == 1000


def test_every_figure_is_written_even_without_data(tmp_path: Path):
    for runs in (make_runs(), make_runs()[3:]):  # the second: no run has any figure data
        written = write_comparison(runs, tmp_path, ["sweep"])
        names = {p.name for p in written}
        assert {"comparison.md", "comparison.csv", "attention_masks.png"} <= names
        for path in written:
            if path.suffix == ".png":
                assert path.read_bytes()[:8] == PNG


def write_run(run_dir: Path, overrides: list[str], summary: dict | None, csv_text: str = ""):
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if summary is not None:
        update_record(run_dir, **summary)
    if csv_text:
        (run_dir / "csv").mkdir()
        (run_dir / "csv" / "metrics.csv").write_text(csv_text)


def test_load_runs_reads_saved_runs_in_job_order(tmp_path: Path):
    sweep = tmp_path / "sweep"
    csv_text = "epoch,step,train/loss,val/loss\n0,4,3.0,\n0,4,,2.5\n0,9,2.0,\n0,9,,1.5\n"
    write_run(sweep / "10", ["attention=mqa"], {"status": "completed"}, csv_text)
    write_run(sweep / "2", ["attention=gqa"], None)  # killed before anything was written
    (sweep / "2" / "summary.json").write_text("{truncated")  # and a damaged summary
    runs = load_runs([sweep])
    assert [r.label for r in runs] == ["2", "10"]  # numeric order
    assert runs[0].status == "incomplete" and runs[0].overrides == ["attention=gqa"]
    assert runs[1].series["val/loss"] == [(4, 2.5), (9, 1.5)]
    assert runs[1].final("val/loss") == 1.5  # the CSV's last value
    other = tmp_path / "other"
    write_run(other / "0", ["seed=2"], {"status": "completed"})
    labels = [r.label for r in load_runs([sweep, other])]
    assert labels == ["sweep/2", "sweep/10", "other/0"]


def test_load_runs_refuses_missing_and_empty_dirs(tmp_path: Path):
    with pytest.raises(UserError, match="not a directory"):
        load_runs([tmp_path / "nope"])
    with pytest.raises(UserError, match="holds no runs"):
        load_runs([tmp_path])


def test_update_record_merges_fields_and_refuses_unknown_ones(tmp_path: Path):
    update_record(tmp_path, status="running", params=3)
    update_record(tmp_path, status="completed")
    assert json.loads((tmp_path / "summary.json").read_text()) == {
        "status": "completed",
        "params": 3,
    }
    with pytest.raises(TypeError):
        update_record(tmp_path, parameters=3)  # a typo must not write a key nobody reads
    assert not [p for p in tmp_path.iterdir() if p.name != "summary.json"]  # no temp file left


def test_peak_memory_of_a_run_after_another_in_its_process_is_marked():
    runs = make_runs()[:3]
    for run, process in zip(runs, ("host:1", "host:1", "host:2"), strict=True):
        run.record.process = process
        run.record.metrics["memory/rss_peak_mib"] = 100.0
    rows = comparison_rows(runs)
    assert [r["peak_memory_includes_earlier_jobs"] for r in rows] == [False, True, False]
    assert "upper bound" in render_markdown(runs, rows, ["sweep"])
