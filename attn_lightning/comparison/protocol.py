"""The comparison protocol: arms over seeds and a learning-rate grid, `protocol.md` and
`arms.csv`.

A sweep's runs are grouped into arms (comparison/arms.py: the same overrides apart from `seed`
and `optim.lr`). For each arm:
- the learning rate is chosen on validation: the rate whose seeds have the lowest mean final
  val loss (among the rates whose every seed completed, when there is one). Its test metrics are
  those of the runs at that rate, so the choice never sees the test split;
- every final metric is the mean over its seeds with a 95% Student t interval,
  mean ± t_{0.975, n-1} · s / √n (comparison/student_t.py); one seed has no interval;
- arms are ranked on mean test loss (val loss when some arm has no test), and each is tested
  against the best with Welch's two-sided t-test, its p-value Holm-adjusted over all the arms
  tested (comparison/multiple_comparisons.py): `≈ best` where the adjusted p is 5% or more,
  `worse` where it is below.

The per-run values come from the comparison's own column spec (comparison_columns.COLUMNS),
so an arm averages exactly what the per-run table shows. `ARM_COLUMNS` drives arms.csv and the
markdown table in one place, as COLUMNS does for the per-run files.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attn_lightning.analysis.plots import save_png
from attn_lightning.analysis.report import markdown_table
from attn_lightning.atomic import write_text
from attn_lightning.comparison.arms import SEED, Arm, Cell, group_arms, override_value
from attn_lightning.comparison.columns import Row
from attn_lightning.comparison.multiple_comparisons import holm_adjusted
from attn_lightning.comparison.protocol_plots import arm_final_losses, arm_loss_curves, lr_grid
from attn_lightning.comparison.runs import Run
from attn_lightning.comparison.student_t import MeanInterval, WelchTest, mean_interval, welch_test

CONFIDENCE = 0.95
ALPHA = 0.05  # family-wise level (Holm) for "indistinguishable from the best"
SELECTION_METRIC = "val_loss"  # a per-run column: what the learning rate is chosen on
RANKED_METRICS = ("test_loss", "val_loss")  # the first that every arm has is ranked on


@dataclass
class ArmResult:
    """An arm with its per-run rows, its selection metric at every rate and the chosen rate."""

    arm: Arm
    rows: dict[str, Row]  # run label -> its comparison row
    by_rate: list[tuple[Cell, MeanInterval | None]]  # the selection metric over each rate's seeds
    chosen: Cell | None
    chosen_among_complete: bool  # False: no rate had every seed complete; chosen among the rest

    def values(self, metric: str, cell: Cell | None = None) -> list[float]:
        """The metric of the completed runs of `cell` (default: the chosen rate's)."""
        cell = cell or self.chosen
        if cell is None:
            return []
        rows = [self.rows[run.label] for run in cell.runs]
        return [r[metric] for r in rows if r["status"] == "completed" and r[metric] is not None]

    def summary(self, metric: str, cell: Cell | None = None) -> MeanInterval | None:
        values = self.values(metric, cell)
        return mean_interval(values, CONFIDENCE) if values else None

    def complete(self, cell: Cell) -> bool:
        return len(self.values(SELECTION_METRIC, cell)) == len(cell.runs)


def choose_rate(result: ArmResult) -> None:
    """The rate with the lowest mean validation loss over its seeds (never the test split)."""
    scored = [(cell, s) for cell, s in result.by_rate if s is not None]
    complete = [(cell, s) for cell, s in scored if result.complete(cell)]
    pool = complete or scored
    result.chosen_among_complete = bool(complete) or not scored
    result.chosen = min(pool, key=lambda cs: cs[1].mean)[0] if pool else None


def at_grid_edge(result: ArmResult) -> bool:
    """Whether the chosen rate is the smallest or largest of a grid of two or more rates."""
    rates = [c.lr_value for c in result.arm.cells if c.lr_value is not None]
    chosen = result.chosen.lr_value if result.chosen else None
    return len(rates) > 1 and chosen is not None and chosen in (min(rates), max(rates))


@dataclass
class Protocol:
    """Every arm's result, the metric ranked on, the best arm and each arm's test against it."""

    arms: list[ArmResult]
    ranked: str | None
    best: ArmResult | None
    tests: dict[str, WelchTest | None]  # arm label -> Welch test against the best
    adjusted: dict[str, float]  # arm label -> its Welch p, Holm-adjusted over the arms tested

    @classmethod
    def of(cls, runs: Sequence[Run], rows: Sequence[Row]) -> Protocol:
        by_label = {row["job"]: row for row in rows}
        results = []
        for arm in group_arms(runs):
            result = ArmResult(arm, {r.label: by_label[r.label] for r in arm.runs}, [], None, True)
            result.by_rate = [(cell, result.summary(SELECTION_METRIC, cell)) for cell in arm.cells]
            choose_rate(result)
            results.append(result)
        ranked = next(
            (m for m in RANKED_METRICS if results and all(a.values(m) for a in results)), None
        )
        if ranked is None:  # some arm has no value: rank those that have val loss
            ranked = SELECTION_METRIC if any(a.values(SELECTION_METRIC) for a in results) else None
        scored = [a for a in results if ranked and a.values(ranked)]
        best = min(scored, key=lambda a: a.summary(ranked).mean) if scored else None
        tests = {
            a.arm.label: welch_test(a.values(ranked), best.values(ranked))
            for a in scored
            if best is not None and a is not best
        }
        adjusted = holm_adjusted({label: t.p for label, t in tests.items() if t is not None})
        return cls(results, ranked, best, tests, adjusted)

    def ranking(self) -> list[ArmResult]:
        """Arms by mean of the ranked metric, best first; arms without it last."""

        def key(a: ArmResult) -> tuple:
            s = a.summary(self.ranked) if self.ranked else None
            return (s is None, s.mean if s else 0.0)

        return sorted(self.arms, key=key)

    def versus_best(self, result: ArmResult) -> tuple[str, float | None, float | None]:
        """(`best` | `≈ best` | `worse` | `untested: one seed` | "", Welch p-value, its
        Holm-adjusted value, on which the mark is decided)."""
        if self.best is None or not self.ranked or not result.values(self.ranked):
            return "", None, None
        if result is self.best:
            return "best", None, None
        test = self.tests.get(result.arm.label)
        if test is None:
            return "untested: one seed", None, None
        adjusted = self.adjusted[result.arm.label]
        return ("≈ best" if adjusted >= ALPHA else "worse"), test.p, adjusted


# ---- the column spec of arms.csv and protocol.md's table


@dataclass(frozen=True)
class ArmColumn:
    """One column of the arm table. A `summary` column's value is a MeanInterval: arms.csv has
    `<name>_mean`, `<name>_ci95` (half width, empty for one seed) and `<name>_n`, and the
    markdown cell reads `mean ± half width` (`mean (n=1)` for one seed). `header` None: CSV
    only; a column no arm has a value for is left out of the markdown."""

    name: str
    value: Callable[[ArmResult, Protocol], Any]
    header: str | None = None
    fmt: str = ""
    summary: bool = False  # the value is a MeanInterval (or None)


def _summary(name: str, header: str | None, fmt: str) -> ArmColumn:
    """Mean and interval over the chosen rate's seeds of a per-run column."""
    return ArmColumn(name, lambda arm, _: arm.summary(name), header, fmt, summary=True)


def _seeds(arm: ArmResult, _: Protocol) -> str:
    if arm.chosen is None:
        return f"0/{len(arm.arm.runs)}"
    done, total = len(arm.values(SELECTION_METRIC)), len(arm.chosen.runs)
    return str(done) if done == total else f"{done}/{total}"


def _params(arm: ArmResult, _: Protocol) -> int | None:
    counts = [row["params"] for row in arm.rows.values() if row["params"]]
    return counts[0] if counts else None


def _state_kib(arm: ArmResult, _: Protocol) -> float | None:
    """The decoding state per sequence: the arm's architecture fixes it (seed and rate do not)."""
    sizes = [row.get("decoding_state_kib") for row in arm.rows.values()]
    return next((size for size in sizes if size is not None), None)


def _seed_list(arm: ArmResult, _: Protocol) -> str:
    cell = arm.chosen or (arm.arm.cells[0] if arm.arm.cells else None)
    seeds = sorted(str(override_value(r, SEED) or "") for r in cell.runs) if cell else []
    return ";".join(sorted(seeds, key=lambda s: (len(s), s)))  # numeric order for integers


ARM_COLUMNS: tuple[ArmColumn, ...] = (
    ArmColumn("arm", lambda arm, _: arm.arm.label, "arm"),
    ArmColumn("overrides", lambda arm, _: " ".join(arm.arm.key)),
    ArmColumn("lr", lambda arm, _: arm.chosen.lr if arm.chosen else None, "lr (chosen on val)"),
    ArmColumn("lr_grid", lambda arm, _: ";".join(c.lr or "config" for c in arm.arm.cells)),
    ArmColumn("seeds", _seeds, "seeds"),
    ArmColumn("seed_values", _seed_list),
    ArmColumn("params", _params, "params", ",d"),
    ArmColumn("decoding_state_kib", _state_kib, "state KiB/seq", ",.1f"),
    _summary("val_loss", "val loss", ".4f"),
    _summary("test_loss", "test loss", ".4f"),
    ArmColumn("vs_best", lambda arm, p: p.versus_best(arm)[0], "vs best"),
    ArmColumn("welch_p", lambda arm, p: p.versus_best(arm)[1], "Welch p", ".2g"),
    ArmColumn("holm_p", lambda arm, p: p.versus_best(arm)[2], "Holm p", ".2g"),
    _summary("train_loss", "train loss", ".4f"),
    _summary("val_ppl", "val ppl", ".3f"),
    _summary("test_ppl", None, ".3f"),
    _summary("val_answer_token_acc", "val answer acc", ".3f"),
    _summary("val_exact_match", "val exact", ".3f"),
    _summary("test_answer_token_acc", "test answer acc", ".3f"),
    _summary("test_exact_match", "test exact", ".3f"),
    _summary("tokens_per_sec_median", "tokens/s", ",.0f"),
    _summary("peak_memory_mib", "peak MiB", ",.0f"),
    _summary("wall_time_s", "wall s", ".1f"),
    ArmColumn("lr_chosen_among_complete", lambda arm, _: arm.chosen_among_complete),
)


def arm_rows(protocol: Protocol, columns: Sequence[ArmColumn] = ARM_COLUMNS) -> list[Row]:
    """One dict per arm (ranking order) with a value per column."""
    return [{c.name: c.value(arm, protocol) for c in columns} for arm in protocol.ranking()]


def render_arms_csv(rows: Sequence[Row], columns: Sequence[ArmColumn] = ARM_COLUMNS) -> str:
    """arms.csv: a row per arm; a summary column as its mean, interval half width and n."""
    names: list[str] = []
    for c in columns:
        names += [f"{c.name}_mean", f"{c.name}_ci95", f"{c.name}_n"] if c.summary else [c.name]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat: dict[str, Any] = {}
        for c in columns:
            value = row[c.name]
            if c.summary:
                s = value
                flat[f"{c.name}_mean"] = s.mean if s else ""
                flat[f"{c.name}_ci95"] = s.half_width if s and s.half_width is not None else ""
                flat[f"{c.name}_n"] = s.n if s else ""
            else:
                flat[c.name] = "" if value is None else value
        writer.writerow(flat)
    return buffer.getvalue()


def arm_cell(column: ArmColumn, row: Row) -> str:
    """The value as protocol.md shows it: `mean ± half width`, `mean (n=1)`, or formatted."""
    value = row[column.name]
    if value is None:
        return ""
    if isinstance(value, MeanInterval):
        mean = format(value.mean, column.fmt)
        if value.half_width is None:
            return f"{mean} (n={value.n})"
        return f"{mean} ± {format(value.half_width, column.fmt)}"
    return format(value, column.fmt)


PROTOCOL_FIGURES = {
    "protocol_loss_curves.png": "Validation loss per arm: mean over seeds, 95% t-interval band",
    "protocol_final_loss.png": "Final losses per arm: mean over seeds, 95% t-interval bars",
    "protocol_lr_grid.png": "Learning-rate grid: mean val loss over seeds per rate",
}


def render_protocol_markdown(
    protocol: Protocol,
    rows: Sequence[Row],
    sources: list[str],
    columns: Sequence[ArmColumn] = ARM_COLUMNS,
) -> str:
    """protocol.md: the arm table (ranking order) with how to read it, the learning-rate
    grid, warnings about seed sets, the figures."""
    arms = protocol.arms
    lines = ["# Comparison protocol: arms over seeds and learning rates", ""]
    lines += [f"Runs from {', '.join(f'`{s}`' for s in sources)}."]
    rates = sorted(
        {c.lr for a in arms for c in a.arm.cells if c.lr is not None},
        key=lambda r: float(r) if _numeric(r) else 0.0,
    )
    seed_counts = sorted({len(a.chosen.runs) for a in arms if a.chosen})
    lines += [
        "",
        f"{len(arms)} arms (runs with the same overrides apart from `seed` and `optim.lr`); "
        f"seeds per arm and rate: {', '.join(map(str, seed_counts)) or 'none'}; learning-rate "
        f"grid: {', '.join(rates) if rates else 'none (the config rate)'}.",
    ]
    seed_sets = {a.arm.label: _seed_list(a, protocol) for a in arms}
    if len(set(seed_sets.values())) > 1:
        lines += [
            "",
            "**Warning: the arms do not share their seeds** ("
            + "; ".join(f"{label}: {seeds or '?'}" for label, seeds in seed_sets.items())
            + "): their means average different initialisations and data orders.",
        ]
    lines += ["", "## Arms, at each arm's chosen learning rate", ""]
    shown = [c for c in columns if c.header and any(row[c.name] not in (None, "") for row in rows)]
    lines += markdown_table(
        [c.header for c in shown], [[arm_cell(c, r) for c in shown] for r in rows]
    )
    lines += ["", *_how_to_read(protocol)]
    if any(len(a.arm.cells) > 1 for a in arms):
        lines += ["", "## Learning-rate grid", "", *_grid_table(protocol)]
    for name, caption in PROTOCOL_FIGURES.items():
        lines += ["", f"## {caption}", "", f"![{caption}]({name})"]
    return "\n".join(lines) + "\n"


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _how_to_read(protocol: Protocol) -> list[str]:
    ranked = (protocol.ranked or "").replace("_", " ")
    notes = [
        f"- Values: mean over the seeds of the chosen rate ± the half width of the "
        f"{CONFIDENCE:.0%} Student t interval, t_{{0.975, n-1}} · s / √n (s: the seeds' sample "
        "standard deviation). An arm with one seed shows its value and `(n=1)`: no interval.",
        "- Learning rate: per arm, the rate of the grid with the lowest mean final val loss over "
        "its seeds (among rates whose every seed completed). Test metrics are those of the runs at "
        "that rate: the choice never sees the test split.",
    ]
    if protocol.ranked:
        notes.append(
            f"- Ranked on mean {ranked}, best first. `vs best`: Welch's two-sided t-test "
            f"(unequal variances, Welch–Satterthwaite degrees of freedom) of the arm's per-seed "
            f"{ranked} against the best arm's (`Welch p`), its p-value Holm-adjusted over the "
            f"{len(protocol.adjusted)} arms tested (`Holm p`: the chance that any arm is "
            f"called worse when none is stays under {ALPHA:.0%}); `≈ best`: Holm p ≥ {ALPHA}, "
            f"`worse`: Holm p < {ALPHA}; `untested`: an arm with fewer than 2 seeds. Not "
            "significantly different is not equal (with 3 seeds only large gaps are detected); "
            "the best arm is itself picked by these losses, which widens its gaps to the others: "
            "read a `worse` near the level with care."
        )
    edge = [a.arm.label for a in protocol.arms if at_grid_edge(a)]
    if edge:
        notes.append(
            f"- **Chosen at the edge of the grid**: {', '.join(edge)}. The best rate may lie "
            "outside it: extend the grid (`optim.lr=...`) before reading these arms as tuned."
        )
    if not all(a.chosen_among_complete for a in protocol.arms):
        notes.append(
            "- Some arm had no rate whose every seed completed: its rate was chosen among the "
            "incomplete ones (arms.csv `lr_chosen_among_complete`)."
        )
    return notes


def _grid_table(protocol: Protocol) -> list[str]:
    """Mean val loss ± interval per arm (rows) and rate (columns); the chosen rate in bold."""
    rates: list[str | None] = []
    for a in protocol.arms:
        rates += [c.lr for c in a.arm.cells if c.lr not in rates]
    rates.sort(key=lambda r: (r is None, float(r) if r and _numeric(r) else 0.0))
    fmt = ArmColumn("val", lambda *_: None, fmt=".4f")
    table = []
    for a in protocol.ranking():
        by_lr = {c.lr: (c, s) for c, s in a.by_rate}
        cells = []
        for rate in rates:
            if rate not in by_lr or by_lr[rate][1] is None:
                cells.append("")
                continue
            cell, s = by_lr[rate]
            text = arm_cell(fmt, {"val": s})
            cells.append(f"**{text}**" if cell is a.chosen else text)
        table.append([a.arm.label, *cells])
    header = ["arm", *(f"val loss @ lr={r}" if r else "val loss @ config lr" for r in rates)]
    return markdown_table(header, table)


def write_protocol(
    runs: Sequence[Run], rows: Sequence[Row], output_dir: str | Path, sources: list[str]
) -> list[Path]:
    """protocol.md, arms.csv and the protocol's figures in output_dir (each atomically), from
    the runs and their comparison rows."""
    out = Path(output_dir)
    protocol = Protocol.of(runs, rows)
    table = arm_rows(protocol)
    written = [
        write_text(out / "arms.csv", render_arms_csv(table)),
        write_text(out / "protocol.md", render_protocol_markdown(protocol, table, sources)),
    ]
    curves = {
        a.arm.label: [r.series.get("val/loss", []) for r in (a.chosen.runs if a.chosen else [])]
        for a in protocol.ranking()
    }
    finals = {
        a.arm.label: {"val/loss": a.summary("val_loss"), "test/loss": a.summary("test_loss")}
        for a in protocol.ranking()
    }
    grid = {
        a.arm.label: [(c.lr_value, s) for c, s in a.by_rate if c.lr_value is not None]
        for a in protocol.arms
    }
    chosen = {a.arm.label: a.chosen.lr_value if a.chosen else None for a in protocol.arms}
    figures = {
        "protocol_loss_curves.png": arm_loss_curves(curves),
        "protocol_final_loss.png": arm_final_losses(finals),
        "protocol_lr_grid.png": lr_grid(grid, chosen),
    }
    return written + [save_png(fig, out / name) for name, fig in figures.items()]
