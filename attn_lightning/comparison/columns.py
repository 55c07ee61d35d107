"""The comparison's columns: one spec (`COLUMNS`) drives comparison.csv and the results table
of comparison.md, and says how each value is read from a run (its record, comparison/runs.py).

A column added here appears in both files; one with a markdown header shows in the table
whenever some run has a value for it.
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attn_lightning.analysis.report import flatten
from attn_lightning.comparison.arms import deliberate_settings
from attn_lightning.comparison.runs import Run

VANILLA = "vanilla"  # the parameter reference's config option
STEPS_TRAINED = "steps trained"


def attention_name(run: Run) -> str:
    """The run's variant by its config option (`gqa`; the class name in a record without one), with
    a hybrid stack's other layers (`gla+vanilla@1`)."""
    return run.record.attention_label if run.record else ""


def params(run: Run) -> int | None:
    return run.record.params if run.record else None


def is_vanilla(run: Run) -> bool:
    record = run.record
    if record is None:
        return False
    if record.attention_option is not None:  # a hybrid stack is no vanilla reference
        return record.attention_label == VANILLA
    return record.variant == "VanillaAttention"  # a record without an option name


def reference_run(runs: Sequence[Run]) -> Run | None:
    """The parameter reference: the largest run with vanilla attention, else the largest run."""
    counted = [r for r in runs if params(r) is not None]
    pool = [r for r in counted if is_vanilla(r)] or counted
    return max(pool, key=lambda r: params(r) or 0) if pool else None


def comparable(run: Run) -> dict[str, str]:
    """The settings a fair comparison shares, flattened, values as canonical JSON."""
    record = run.record
    if record is None:
        return {}
    values = {k: json.dumps(v, sort_keys=True) for k, v in flatten(record.comparable).items()}
    if run.status == "completed" and record.step is not None:
        values[STEPS_TRAINED] = json.dumps(record.step)
    return values


def differences(runs: Sequence[Run]) -> tuple[dict[str, list[str]], dict[str, dict[str, str]]]:
    """Which runs differ from the others, and in what.

    Returns ({run label: keys where it differs from the majority}, {key: {run label: value}})
    for every key with more than one value. On a tie (no majority value) every run is flagged.
    The seed of a sweep over seeds differs on purpose: it is not compared (arms.py)."""
    values = {r.label: comparable(r) for r in runs}
    keys = sorted({k for v in values.values() for k in v} - deliberate_settings(runs))
    flags: dict[str, list[str]] = {r.label: [] for r in runs}
    differing: dict[str, dict[str, str]] = {}
    for key in keys:
        seen = {label: v[key] for label, v in values.items() if key in v}
        counts = Counter(seen.values()).most_common()
        if len(counts) < 2:
            continue
        differing[key] = seen
        majority = counts[0][0] if counts[0][1] > counts[1][1] else None
        for label, value in seen.items():
            if value != majority:
                flags[label].append(key)
    return flags, differing


def tokens_per_sec(run: Run) -> float | None:
    """Median of the logged train/tokens_per_sec values (robust to a slow first interval)."""
    points = run.series.get("train/tokens_per_sec")
    if points:
        return statistics.median(v for _, v in points)
    return run.final("train/tokens_per_sec")


def peak_memory(run: Run) -> tuple[float | None, str]:
    for metric, kind in (
        ("memory/cuda_peak_allocated_mib", "cuda"),
        ("memory/rss_peak_mib", "rss"),
    ):
        value = run.final(metric)
        if value is not None:
            return value, kind
    return None, ""


def after_others_in_process(runs: Sequence[Run]) -> set[str]:
    """Runs that ran in the same process as an earlier run of their sweep (Hydra's basic
    launcher runs every job in one process; pool launchers reuse workers) on a platform where
    the memory monitor could not reset the process's peak (`peak_memory_scope: process`): their
    peak includes the earlier runs', an upper bound only."""
    seen: set[tuple[Path, str]] = set()
    shared = set()
    for run in runs:
        if run.record is None or not run.record.process:
            continue
        key = (run.path.parent.resolve(), run.record.process)
        if run.record.peak_memory_scope == "run":
            seen.add(key)
            continue
        if key in seen:
            shared.add(run.label)
        seen.add(key)
    return shared


def status_and_error(run: Run) -> tuple[str, str]:
    """What the report says about how the run ended."""
    if run.record is None:
        return "incomplete", "no summary.json: killed before it started, or not an attn run"
    status = run.status
    if status == "running":
        return (
            "incomplete",
            "started, no end recorded: killed, still running, "
            "or a single run that exited on an error",
        )
    return status, run.record.error or ""


@dataclass(frozen=True)
class Sweep:
    """What a run's row needs to know about the other runs, found once per comparison."""

    reference_params: int | None
    flags: dict[str, list[str]]  # run label -> settings where it differs from the majority
    shared_process: set[str]  # runs whose peak memory includes earlier jobs'

    @classmethod
    def of(cls, runs: Sequence[Run]) -> Sweep:
        reference = reference_run(runs)
        return cls(
            reference_params=params(reference) if reference is not None else None,
            flags=differences(runs)[0],
            shared_process=after_others_in_process(runs),
        )


Row = dict[str, Any]


@dataclass(frozen=True)
class Column:
    """One column of the comparison. `name` heads it in comparison.csv (every column, in
    order); `header` in comparison.md's results table (None: CSV only), where the value is
    formatted with `fmt` and followed by `mark(row)`, and the column is left out when no run
    has a value. `value` is None where it does not apply (an empty cell)."""

    name: str
    value: Callable[[Run, Sweep], Any]
    header: str | None = None
    fmt: str = ""
    mark: Callable[[Row], str] | None = None


def _final(name: str, metric: str, header: str | None = None, fmt: str = "") -> Column:
    """A column of the metric's last logged value."""
    return Column(name, lambda run, _: run.final(metric), header, fmt)


def _params_delta(run: Run, sweep: Sweep) -> float | None:
    count, reference = params(run), sweep.reference_params
    return 100.0 * (count - reference) / reference if count and reference else None


def _memory_mark(row: Row) -> str:
    shared = "*" if row["peak_memory_includes_earlier_jobs"] else ""
    return f" ({row['peak_memory_kind']}){shared}"


def decoding_state_kib(run: Run) -> float | None:
    """KiB per sequence of the decoding state at the recorded context (runs/record.py)."""
    size = run.record.decoding_state_bytes if run.record else None
    return None if size is None else size / 1024


def _context_mark(row: Row) -> str:
    context = row["decoding_state_context"]
    return f" @{context}" if context is not None else ""


def test_split_accuracies(run: Run, _: Sweep) -> str | None:
    """`L64_kv4 1.000, L64_kv8 0.912`: the answer accuracy of each named test split beside
    `test` (MQAR's settings, a task's `long`); None for runs without such splits."""
    metrics = set(run.series) | set(run.record.metrics if run.record else ())
    names = sorted(
        (m for m in metrics if m.startswith("test_") and m.endswith("/answer_token_acc")),
        key=lambda m: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", m)],
    )
    values = [(m.split("/")[0].removeprefix("test_"), run.final(m)) for m in names]
    return ", ".join(f"{split} {v:.3f}" for split, v in values if v is not None) or None


def _wall_time(run: Run, _: Sweep) -> float | None:
    if run.record is None or status_and_error(run)[0] == "incomplete":
        return None
    return run.record.wall_time_s


COLUMNS: tuple[Column, ...] = (
    Column("job", lambda run, _: run.label),
    Column("overrides", lambda run, _: " ".join(run.overrides)),
    Column("status", lambda run, _: status_and_error(run)[0], "status"),
    Column("error", lambda run, _: status_and_error(run)[1]),
    Column("attention", lambda run, _: attention_name(run), "attention"),
    Column("params", lambda run, _: params(run), "params", ",d"),
    Column("params_delta_pct", _params_delta, "Δparams", "+.1f", lambda _: "%"),
    Column("steps", lambda run, _: run.record.step if run.record else None),
    _final("train_loss", "train/loss", "train loss", ".4f"),
    _final("val_loss", "val/loss", "val loss", ".4f"),
    _final("val_ppl", "val/ppl", "val ppl", ".3f"),
    _final("test_loss", "test/loss", "test loss", ".4f"),
    _final("test_ppl", "test/ppl"),
    _final("val_answer_token_acc", "val/answer_token_acc", "val answer acc", ".3f"),
    _final("val_exact_match", "val/exact_match", "val exact", ".3f"),
    _final("test_answer_token_acc", "test/answer_token_acc", "test answer acc", ".3f"),
    _final("test_exact_match", "test/exact_match", "test exact", ".3f"),
    Column("test_split_answer_acc", test_split_accuracies, "answer acc per test split"),
    Column(
        "tokens_per_sec_median", lambda run, _: tokens_per_sec(run), "tokens/s (median)", ",.0f"
    ),
    Column("peak_memory_mib", lambda run, _: peak_memory(run)[0], "peak MiB", ",.0f", _memory_mark),
    Column("peak_memory_kind", lambda run, _: peak_memory(run)[1]),
    Column(
        "peak_memory_includes_earlier_jobs",
        lambda run, sweep: (
            run.label in sweep.shared_process if peak_memory(run)[0] is not None else None
        ),
    ),
    Column(
        "decoding_state_kib",
        lambda run, _: decoding_state_kib(run),
        "state KiB/seq @T",
        ",.1f",
        _context_mark,
    ),
    Column(
        "decoding_state_context",
        lambda run, _: run.record.decoding_state_context if run.record else None,
    ),
    Column("wall_time_s", _wall_time, "wall s", ".1f"),
    Column("differs_from_others", lambda run, sweep: ";".join(sweep.flags[run.label])),
    Column("dir", lambda run, _: str(run.path)),
)


def comparison_rows(runs: Sequence[Run], columns: Sequence[Column] = COLUMNS) -> list[Row]:
    """One dict per run with a value per column (None where it does not apply)."""
    sweep = Sweep.of(runs)
    return [{c.name: c.value(run, sweep) for c in columns} for run in runs]


def render_csv(rows: Sequence[Row], columns: Sequence[Column] = COLUMNS) -> str:
    return csv_text(rows, [c.name for c in columns])


def csv_text(rows: Sequence[Row], names: Sequence[str]) -> str:
    """The rows' values of `names` as CSV, an empty cell where a value is None."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in names})
    return buffer.getvalue()


def cell(column: Column, row: Row) -> str:
    """The value as comparison.md shows it: formatted, then its mark."""
    value = row[column.name]
    text = "" if value is None else format(value, column.fmt)
    return text + column.mark(row) if text and column.mark else text
