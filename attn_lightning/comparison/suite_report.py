"""The suite score's files (suite.py says what it computes): `suite.md` (the leaderboard of
variants over tasks, MAD's own numbers beside it, the machine, steps and seeds), `suite.csv`
(one row per variant, task and kind of score) and the figures (suite_plots.py). Written for a
sweep whose runs log a test answer accuracy per setting; other sweeps get none of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from attn_lightning.analysis.plots import save_png
from attn_lightning.analysis.report import markdown_table
from attn_lightning.atomic import write_text
from attn_lightning.comparison.arms import learning_rate
from attn_lightning.comparison.columns import Row, csv_text
from attn_lightning.comparison.protocol import ALPHA, CONFIDENCE
from attn_lightning.comparison.protocol_report import format_cell
from attn_lightning.comparison.runs import Run
from attn_lightning.comparison.suite import (
    SUITE,
    Score,
    Suite,
    has_settings,
    is_recall_task,
    seed_of,
    seed_order,
    task_of,
)
from attn_lightning.comparison.suite_plots import (
    HEATMAP_FIGURE,
    RECALL_FIGURE,
    recall_vs_state,
    suite_heatmap,
)
from attn_lightning.comparison.tradeoff_plots import Point

KINDS = {"ours": "chosen on validation", "mad": "MAD: best over the grid, chosen on test"}
CSV_COLUMNS = (
    *("variant", "task", "kind", "mean", "ci95", "n", "mark", "welch_p", "holm_p"),
    *("per_seed", "cells"),
)


def score_cell(score: Score | None, marks: bool = True) -> str:
    """`0.912 ± 0.031, ≈ best` (the mark where asked); empty without a score."""
    summary = score.summary if score else None
    if score is None or summary is None:
        return ""
    text = format_cell(summary, ".3f")
    return f"{text}, {score.verdict.mark}" if marks and score.verdict.mark else text


def chosen_cells(suite: Suite, variant: str, task: str) -> str:
    """`lr=0.001 wd=0.1` per part of the task (prefixed by the part where there are several),
    `(edge)` where the rate chosen is the smallest or largest of its grid."""
    parts = suite.parts[variant].get(task, [])
    texts = []
    for part in parts:
        chosen = part.result.chosen
        cell = chosen.label if chosen else "none"
        edge = " (edge)" if part.result.at_grid_edge else ""
        prefix = f"{part.label}: " if len(parts) > 1 and part.label else ""
        texts.append(prefix + cell + edge)
    return "; ".join(texts)


def suite_rows(suite: Suite) -> list[Row]:
    """suite.csv: a row per variant, task (then `suite`) and kind of score."""
    rows = []
    for variant in suite.variants:
        for kind, scores in (("ours", suite.ours), ("mad", suite.mad)):
            for task in (*suite.tasks, SUITE):
                score = scores[variant].get(task)
                if score is None:
                    continue
                summary, verdict = score.summary, score.verdict
                per_seed = ";".join(f"{seed}:{value:.6g}" for seed, value in score.per_seed.items())
                cells = chosen_cells(suite, variant, task) if kind == "ours" else ""
                rows.append(
                    {
                        "variant": variant,
                        "task": task,
                        "kind": kind,
                        "mean": summary.mean if summary else None,
                        "ci95": summary.half_width if summary else None,
                        "n": summary.n if summary else 0,
                        "mark": verdict.mark if kind == "ours" else "",
                        "welch_p": verdict.welch_p if kind == "ours" else None,
                        "holm_p": verdict.holm_p if kind == "ours" else None,
                        "per_seed": per_seed,
                        "cells": cells if task != SUITE else "",
                    }
                )
    return rows


def render_suite_csv(rows: Sequence[Row]) -> str:
    return csv_text(rows, CSV_COLUMNS)


def _listed(values: Sequence[object]) -> str:
    return ", ".join(str(v) for v in values) or "not recorded"


def setup_lines(runs: Sequence[Run], suite: Suite) -> list[str]:
    """What the numbers were measured on: machine, steps per task, seeds, grid."""
    recorded = [r.record for r in runs if r.record is not None]
    devices = sorted({record.device for record in recorded if record.device})
    hosts = sorted({record.process.split(":")[0] for record in recorded if record.process})
    steps: dict[str, set[int]] = {task: set() for task in suite.tasks}
    for run in runs:
        if run.record is not None and run.record.step:
            steps[task_of(run)].add(run.record.step)
    seeds = sorted({seed_of(r) for r in runs}, key=seed_order)
    labels = {cell.label for part in suite.every_part for cell in part.result.arm.cells}
    cells = sorted(labels, key=_rates_of)
    if len({frozenset(s) for s in steps.values()}) == 1:
        step_text = f"{_listed(sorted(next(iter(steps.values()))))} optimizer steps per run"
    else:
        each = "; ".join(f"{task} {_listed(sorted(s))}" for task, s in steps.items())
        step_text = f"optimizer steps per run: {each}"
    return [
        f"- Machine: {_listed(devices)} (host {_listed(hosts)}).",
        f"- {len(runs)} runs: {_count(len(suite.variants), 'variant')} x "
        f"{_count(len(suite.tasks), 'task')}; {step_text}.",
        f"- Seeds: {_listed(seeds)}; grid cells: {_listed(cells)}.",
    ]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _rates_of(label: str) -> list[float]:
    """`lr=0.001 wd=0.1` -> [0.001, 0.1]: cell labels in numeric order."""
    return [learning_rate(part.split("=", 1)[1]) or 0.0 for part in label.split()]


def how_to_read(suite: Suite) -> list[str]:
    return [
        "- Task score: per seed, the mean test answer accuracy (answers only, micro over answer "
        "tokens) over the run's test settings (`test_<setting>/answer_token_acc`); a task "
        "split over several runs by sweep axes averages the settings of all of them. Suite: "
        "per seed, the mean over the tasks (MAD's aggregation); a variant without every task "
        "has none.",
        "- Learning rate (and weight decay, where swept): per variant and task (and per run of a "
        "task split by sweep axes), the cell of the grid with the lowest mean final val loss "
        "over its seeds (among cells whose every seed completed), as protocol.md chooses it: "
        "the choice never sees a test metric.",
        f"- Cells: mean over seeds ± the half width of the {CONFIDENCE:.0%} Student t interval "
        "(`(n=1)`: one seed, no interval). Marks per column, higher being better: Welch's "
        "two-sided t-test of each variant's per-seed scores against the best's, p-values "
        f"Holm-adjusted over the variants tested; `≈ best`: Holm p ≥ {ALPHA}, `worse`: below, "
        "`untested: one seed`. Not significantly different is not equal.",
    ]


def render_suite_markdown(runs: Sequence[Run], suite: Suite, sources: list[str]) -> str:
    """suite.md: setup, the leaderboard, MAD's numbers, the chosen rates, per-setting detail."""
    columns = [*suite.tasks, SUITE]
    lines = ["# Synthetic suite: variants over tasks", ""]
    lines += [f"Runs from {', '.join(f'`{s}`' for s in sources)}.", "", *setup_lines(runs, suite)]
    lines += ["", "## Test answer accuracy, rate chosen on validation", ""]
    table = [[v, *(score_cell(suite.ours[v].get(t)) for t in columns)] for v in suite.variants]
    lines += markdown_table(["variant", *columns], table)
    lines += ["", *how_to_read(suite)]
    edge = [
        f"{v} on {t}"
        for v in suite.variants
        for t, parts in suite.parts[v].items()
        if any(p.result.at_grid_edge for p in parts)
    ]
    if edge:
        lines += [
            f"- **Chosen at the edge of the grid**: {', '.join(edge)}. The best rate may lie "
            "outside it (`(edge)` below)."
        ]
    lines += ["", "## MAD's number: best test accuracy over the grid, chosen on test", ""]
    lines += [
        "Each setting at the grid cell with its highest mean test accuracy (MAD keeps each "
        "setting's best run by test accuracy), then the same means over settings and tasks: "
        "comparable with the MAD paper's tables, optimistic by construction, no marks. The "
        "accuracy is MAD's own, per answer class averaged over classes "
        "(`test_<setting>/answer_macro_acc`), where every run of a task logs it; else ours.",
        "",
    ]
    table = [
        [v, *(score_cell(suite.mad[v].get(t), marks=False) for t in columns)]
        for v in suite.variants
    ]
    lines += markdown_table(["variant", *columns], table)
    lines += ["", "## Cells chosen on validation", ""]
    table = [[v, *(chosen_cells(suite, v, t) for t in suite.tasks)] for v in suite.variants]
    lines += markdown_table(["variant", *suite.tasks], table)
    lines += ["", "## Per setting, at the cells chosen on validation", ""]
    for task in suite.tasks:
        names = list(dict.fromkeys(n for v in suite.variants for n in suite.settings(v, task)))
        table = []
        for variant in suite.variants:
            settings = suite.settings(variant, task)
            if settings:
                table.append([variant, *(format_cell(settings.get(n), ".3f") for n in names)])
        lines += [f"### {task}", "", *markdown_table(["variant", *names], table), ""]
    lines += ["## Figures", "", f"![Suite heatmap]({HEATMAP_FIGURE})", ""]
    lines += [f"![Recall against decoding state]({RECALL_FIGURE})"]
    return "\n".join(lines) + "\n"


def recall_points(
    suite: Suite, rows: Sequence[Row]
) -> tuple[dict[str, Point], dict[str, float | None], list[int]]:
    """recall_vs_state's points: (variant, recall task) -> its decoding state (the largest
    recorded among the task's chosen runs) and score; their half widths; the contexts."""
    by_job = {row["job"]: row for row in rows}
    points, errors, contexts = {}, {}, set()
    for variant in suite.variants:
        for task in suite.tasks:
            score = suite.ours[variant].get(task)
            if not is_recall_task(task) or score is None or score.summary is None:
                continue
            chosen = [
                by_job[run.label]
                for part in suite.parts[variant][task]
                for run in (part.result.chosen.runs if part.result.chosen else [])
            ]
            sized = [r for r in chosen if r.get("decoding_state_kib") is not None]
            if not sized:
                continue
            largest = max(sized, key=lambda r: r["decoding_state_context"] or 0)
            contexts.add(largest["decoding_state_context"])
            label = f"{task.removeprefix('mad_')} · {variant.removeprefix('attention=')}"
            points[label] = Point(largest["decoding_state_kib"], score.summary.mean, variant)
            errors[label] = score.summary.half_width
    return points, errors, sorted(c for c in contexts if c is not None)


def write_suite(
    runs: Sequence[Run], rows: Sequence[Row], output_dir: str | Path, sources: list[str]
) -> list[Path]:
    """suite.md, suite.csv and the suite's figures in output_dir, for a sweep whose runs log
    a test accuracy per setting (none otherwise)."""
    if not has_settings(runs):
        return []
    out = Path(output_dir)
    suite = Suite.of(runs, rows)
    figures = {
        HEATMAP_FIGURE: suite_heatmap(suite.variants, suite.tasks, suite.ours),
        RECALL_FIGURE: recall_vs_state(*recall_points(suite, rows)),
    }
    return [
        write_text(out / "suite.csv", render_suite_csv(suite_rows(suite))),
        write_text(out / "suite.md", render_suite_markdown(runs, suite, sources)),
        *(save_png(fig, out / name) for name, fig in figures.items()),
    ]
