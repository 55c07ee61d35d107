"""A sweep's comparison: one row per run (job), `comparison.md`, `comparison.csv` and figures.

The same function serves the Hydra callback at the end of a multirun and
`python -m attn_lightning.compare` on saved sweeps: `compare_runs(sweep_dirs, output_dir)`.

Honesty checks, because a table invites reading every difference as the variant's doing:
- parameters: counted per run and shown against a reference (the largest run with vanilla
  attention, else the largest run); variants carry projections of their own (GQA/MQA fewer,
  Linformer more) even with the model config shared;
- like with like: the config keys that must agree (data, steps, seed: stamped by the callback)
  and the steps actually trained are compared, and every run that differs from the majority is
  flagged, in the table and in a warning above it.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attn_lightning.analysis.comparison_plots import (
    final_loss_bars,
    layer_heatmap,
    mask_panels,
    pattern_panels,
    val_loss_curves,
)
from attn_lightning.analysis.plots import save_png
from attn_lightning.analysis.report import flatten, markdown_table
from attn_lightning.analysis.runs import Run, load_runs
from attn_lightning.atomic import write_text

VANILLA = "VanillaAttention"
STEPS_TRAINED = "steps trained"
CSV_COLUMNS = [
    "job",
    "overrides",
    "status",
    "error",
    "attention",
    "params",
    "params_delta_pct",
    "steps",
    "train_loss",
    "val_loss",
    "val_ppl",
    "test_loss",
    "test_ppl",
    "val_answer_token_acc",
    "val_exact_match",
    "test_answer_token_acc",
    "test_exact_match",
    "tokens_per_sec_median",
    "peak_memory_mib",
    "peak_memory_kind",
    "peak_memory_includes_earlier_jobs",
    "wall_time_s",
    "differs_from_others",
    "dir",
]
FINAL_METRICS = {  # csv column -> logged metric (its last value)
    "train_loss": "train/loss",
    "val_loss": "val/loss",
    "val_ppl": "val/ppl",
    "test_loss": "test/loss",
    "test_ppl": "test/ppl",
    "val_answer_token_acc": "val/answer_token_acc",
    "val_exact_match": "val/exact_match",
    "test_answer_token_acc": "test/answer_token_acc",
    "test_exact_match": "test/exact_match",
}
FIGURES = {
    "loss_curves.png": "Validation loss against step",
    "final_loss_bar.png": "Final losses",
    "attention_patterns.png": "Attention patterns (mean over layers and heads)",
    "attention_entropy.png": "Attention entropy per layer",
    "attention_distance.png": "Attention distance per layer",
    "attention_masks.png": "Which (query, key) pairs each run's attention connects",
}


def attention_name(run: Run) -> str:
    target = run.summary.get("attention", {}).get("_target_", "")
    return target.rsplit(".", 1)[-1]


def params(run: Run) -> int | None:
    value = run.summary.get("params")
    return int(value) if isinstance(value, (int, float)) else None


def reference_run(runs: Sequence[Run]) -> Run | None:
    """The parameter reference: the largest run with vanilla attention, else the largest run."""
    counted = [r for r in runs if params(r) is not None]
    vanilla = [r for r in counted if attention_name(r) == VANILLA]
    pool = vanilla or counted
    return max(pool, key=lambda r: params(r) or 0) if pool else None


def comparable(run: Run) -> dict[str, str]:
    """The settings a fair comparison shares, flattened, values as canonical JSON."""
    values = {
        k: json.dumps(v, sort_keys=True)
        for k, v in flatten(run.summary.get("comparable", {})).items()
    }
    if run.status == "completed" and "step" in run.summary:
        values[STEPS_TRAINED] = json.dumps(run.summary["step"])
    return values


def differences(runs: Sequence[Run]) -> tuple[dict[str, list[str]], dict[str, dict[str, str]]]:
    """Which runs differ from the others, and in what.

    Returns ({run label: keys where it differs from the majority}, {key: {run label: value}})
    for every key with more than one value. On a tie (no majority value) every run is flagged."""
    values = {r.label: comparable(r) for r in runs}
    keys = sorted({k for v in values.values() for k in v})
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
        process = run.summary.get("process")
        if not process:
            continue
        if run.summary.get("peak_memory_scope") == "run":
            seen.add((run.path.parent.resolve(), str(process)))
            continue
        key = (run.path.parent.resolve(), str(process))
        if key in seen:
            shared.add(run.label)
        seen.add(key)
    return shared


def status_and_error(run: Run) -> tuple[str, str]:
    """What the report says about how the run ended."""
    if not run.summary:
        return "incomplete", "no summary.json: killed before it started, or not an attn run"
    status = run.status
    if status == "running":
        return (
            "incomplete",
            "started, no end recorded: killed, still running, "
            "or a single run that exited on an error",
        )
    return status, str(run.summary.get("error") or "")


def comparison_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One dict per run with every CSV column (None where a value does not apply)."""
    reference = reference_run(runs)
    ref_params = params(reference) if reference is not None else None
    flags, _ = differences(runs)
    shared_process = after_others_in_process(runs)
    rows = []
    for run in runs:
        status, error = status_and_error(run)
        count = params(run)
        memory, memory_kind = peak_memory(run)
        row: dict[str, Any] = {
            "job": run.label,
            "overrides": " ".join(run.overrides),
            "status": status,
            "error": error,
            "attention": attention_name(run),
            "params": count,
            "params_delta_pct": (
                100.0 * (count - ref_params) / ref_params if count and ref_params else None
            ),
            "steps": run.summary.get("step"),
            **{column: run.final(metric) for column, metric in FINAL_METRICS.items()},
            "tokens_per_sec_median": tokens_per_sec(run),
            "peak_memory_mib": memory,
            "peak_memory_kind": memory_kind,
            "peak_memory_includes_earlier_jobs": (
                run.label in shared_process if memory is not None else None
            ),
            "wall_time_s": run.summary.get("wall_time_s") if status != "incomplete" else None,
            "differs_from_others": ";".join(flags[run.label]),
            "dir": str(run.path),
        }
        rows.append(row)
    return rows


def render_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in CSV_COLUMNS})
    return buffer.getvalue()


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def shared_overrides(runs: Sequence[Run]) -> list[str]:
    """Overrides every run was given (the sweep's constants), in the first run's order."""
    if not runs:
        return []
    common = set(runs[0].overrides).intersection(*(r.overrides for r in runs[1:]))
    return [o for o in runs[0].overrides if o in common]


def short_labels(runs: Sequence[Run]) -> dict[str, str]:
    """`<job> <overrides that vary>`: what tells the runs apart, for figures and tables."""
    shared = set(shared_overrides(runs))
    labels = {}
    for run in runs:
        varying = [o for o in run.overrides if o not in shared]
        labels[run.label] = " ".join([run.label, *varying])
    return labels


def render_markdown(runs: Sequence[Run], rows: Sequence[dict[str, Any]], sources: list[str]) -> str:
    """comparison.md: warnings first (what is not like with like), then the table, then the
    figures."""
    labels = short_labels(runs)
    flags, differing = differences(runs)
    lines = ["# Sweep comparison", ""]
    lines += [f"Runs from {', '.join(f'`{s}`' for s in sources)}."]
    shared = shared_overrides(runs)
    if shared and len(runs) > 1:
        lines += ["", f"Overrides shared by every run: `{' '.join(shared)}`"]
    counts = Counter(row["status"] for row in rows)
    lines += ["", "Status: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "."]

    lines += ["", "## Like with like", ""]
    if differing:
        lines += [
            "**Warning: not like with like.** These settings differ between runs, so the "
            "differences in the table are not due to the varied option alone; flagged runs "
            "(⚠ in the table) differ from the majority:",
            "",
        ]
        table = []
        for key, values in differing.items():
            table += [[f"`{key}`", f"`{v}`", labels[label]] for label, v in values.items()]
        lines += markdown_table(["setting", "value", "run"], table)
    else:
        keys = sorted({k for r in runs for k in comparable(r)})
        if keys:
            lines += [f"Every run shares: {', '.join(_grouped(keys))}."]
        else:
            lines += ["No run recorded its data, steps and seed: nothing could be checked."]

    reference = reference_run(runs)
    counted = [r for r in rows if r["params"]]
    lines += ["", "## Parameter budget", ""]
    if reference is not None and counted:
        low = min(r["params"] for r in counted)
        high = max(r["params"] for r in counted)
        lines += [
            f"Reference: run {labels[reference.label]} ({attention_name(reference) or '?'}), "
            f"{params(reference):,} parameters (position embeddings excluded, as nanoGPT counts)."
            f" Runs span {low:,} to {high:,}.",
        ]
        if high != low:
            lines += [
                "",
                "The model config is shared, but variants carry projections of their own "
                "(grouped/multi-query attention: smaller key/value projections; Linformer: "
                "segment projections). A lower loss with more parameters is not a like-with-like "
                "win: read the `Δparams` column next to the losses.",
            ]
    else:
        lines += ["No run recorded its parameter count."]

    lines += ["", "## Results", ""]
    lines += _results_table(rows, labels, flags)
    if any(r["peak_memory_includes_earlier_jobs"] for r in rows):
        lines += [
            "",
            "\\* Ran in the same process as an earlier job: the process's peak memory includes "
            "the earlier jobs', so this is an upper bound, not the job's own peak. Compare "
            "memory across separate runs (one process each).",
        ]
    failed = [r for r in rows if r["status"] != "completed"]
    if failed:
        lines += ["", "Runs that did not complete:", ""]
        lines += [
            f"- {labels[r['job']]}: {r['status']}: {r['error']} (`{r['dir']}`)" for r in failed
        ]
    for name, caption in FIGURES.items():
        lines += ["", f"## {caption}", "", f"![{caption}]({name})"]
    return "\n".join(lines) + "\n"


def _grouped(keys: Sequence[str]) -> list[str]:
    """`data.*` (10 settings) for a group of keys, the others by name."""
    heads = Counter(k.split(".")[0] for k in keys if "." in k)
    shown: list[str] = []
    for key in keys:
        head = key.split(".")[0]
        if "." in key and heads[head] > 2:
            group = f"`{head}.*` ({heads[head]} settings)"
            if group not in shown:
                shown.append(group)
        else:
            shown.append(f"`{key}`")
    return shown


def _results_table(
    rows: Sequence[dict[str, Any]], labels: dict[str, str], flags: dict[str, list[str]]
) -> list[str]:
    columns = [  # (header, csv column, format); task columns only when some run has them
        ("params", "params", ",d"),
        ("Δparams", "params_delta_pct", "+.1f"),
        ("train loss", "train_loss", ".4f"),
        ("val loss", "val_loss", ".4f"),
        ("val ppl", "val_ppl", ".3f"),
        ("test loss", "test_loss", ".4f"),
        ("val answer acc", "val_answer_token_acc", ".3f"),
        ("val exact", "val_exact_match", ".3f"),
        ("test answer acc", "test_answer_token_acc", ".3f"),
        ("test exact", "test_exact_match", ".3f"),
        ("tokens/s (median)", "tokens_per_sec_median", ",.0f"),
        ("peak MiB", "peak_memory_mib", ",.0f"),
        ("wall s", "wall_time_s", ".1f"),
    ]
    columns = [c for c in columns if any(row[c[1]] is not None for row in rows)]
    header = ["run", "status", "attention", *(h for h, _, _ in columns)]
    table = []
    for row in rows:
        flag = f" ⚠ differs: {', '.join(flags[row['job']])}" if flags[row["job"]] else ""
        cells = [labels[row["job"]] + flag, row["status"], row["attention"]]
        for _, key, spec in columns:
            cell = _fmt(row[key], spec)
            if key == "params_delta_pct" and cell:
                cell += "%"
            if key == "peak_memory_mib" and cell:
                cell += f" ({row['peak_memory_kind']})"
                cell += "*" if row["peak_memory_includes_earlier_jobs"] else ""
            cells.append(cell)
        table.append(cells)
    return markdown_table(header, table)


def write_comparison(runs: Sequence[Run], output_dir: str | Path, sources: list[str]) -> list[Path]:
    """comparison.md, comparison.csv and the figures in output_dir (each written atomically)."""
    out = Path(output_dir)
    rows = comparison_rows(runs)
    labels = short_labels(runs)
    written = [
        write_text(out / "comparison.csv", render_csv(rows)),
        write_text(out / "comparison.md", render_markdown(runs, rows, sources)),
    ]
    curves = {labels[r.label]: r.series.get("val/loss", []) for r in runs}
    finals = {
        labels[row["job"]]: (row["val_loss"], row["test_loss"], row["status"]) for row in rows
    }
    stats = {
        name: {labels[r.label]: _layer_means(r, name) for r in runs}
        for name in ("entropy", "distance")
    }
    figures = {
        "loss_curves.png": val_loss_curves(curves),
        "final_loss_bar.png": final_loss_bars(finals),
        "attention_patterns.png": pattern_panels(
            {labels[r.label]: r.summary.get("attention_pattern") for r in runs}
        ),
        "attention_entropy.png": layer_heatmap(
            stats["entropy"], "Attention entropy per layer (mean over heads)", "nats"
        ),
        "attention_distance.png": layer_heatmap(
            stats["distance"],
            "Attention distance per layer (mean over heads)",
            "positions back",
            cmap="viridis",
        ),
        "attention_masks.png": mask_panels(
            {labels[r.label]: r.summary.get("attention_mask") for r in runs}
        ),
    }
    written += [save_png(fig, out / name) for name, fig in figures.items()]
    return written


def _layer_means(run: Run, name: str) -> list[float] | None:
    per_layer = run.summary.get("attention_stats", {}).get(name)
    if not per_layer:
        return None
    return [sum(heads) / len(heads) for heads in per_layer]


def compare_runs(roots: Sequence[str | Path], output_dir: str | Path) -> list[Path]:
    """Load every run under `roots` (sweep or run dirs) and write the comparison to
    output_dir. Raises UserError when a root does not exist or holds no run."""
    runs = load_runs([Path(r) for r in roots])
    return write_comparison(runs, output_dir, [str(r) for r in roots])
