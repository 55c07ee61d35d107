"""The comparison protocol's files (protocol.py says what it computes): `arms.csv` and
`protocol.md`, both from one column spec (`ARM_COLUMNS`, as `COLUMNS` is for the per-run
files), and the protocol's figures (protocol_plots.py).
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
from attn_lightning.comparison.arms import learning_rate
from attn_lightning.comparison.columns import Row
from attn_lightning.comparison.protocol import (
    ALPHA,
    CONFIDENCE,
    SELECTION_METRIC,
    ArmResult,
    Protocol,
    Verdict,
)
from attn_lightning.comparison.protocol_plots import arm_final_losses, arm_loss_curves, lr_grid
from attn_lightning.comparison.runs import Run
from attn_lightning.comparison.student_t import MeanInterval


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


def _mean(name: str, header: str | None, fmt: str) -> ArmColumn:
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


def _verdict(arm: ArmResult, protocol: Protocol) -> Verdict:
    return protocol.verdicts[arm.arm.label]


ARM_COLUMNS: tuple[ArmColumn, ...] = (
    ArmColumn("arm", lambda arm, _: arm.arm.label, "arm"),
    ArmColumn("overrides", lambda arm, _: " ".join(arm.arm.key)),
    ArmColumn("lr", lambda arm, _: arm.chosen.lr if arm.chosen else None, "lr (chosen on val)"),
    ArmColumn("lr_grid", lambda arm, _: ";".join(c.lr or "config" for c in arm.arm.cells)),
    ArmColumn("seeds", _seeds, "seeds"),
    ArmColumn("seed_values", lambda arm, _: arm.seed_values),
    ArmColumn("params", _params, "params", ",d"),
    ArmColumn("decoding_state_kib", _state_kib, "state KiB/seq", ",.1f"),
    _mean("val_loss", "val loss", ".4f"),
    _mean("test_loss", "test loss", ".4f"),
    ArmColumn("vs_best", lambda arm, p: _verdict(arm, p).mark, "vs best"),
    ArmColumn("welch_p", lambda arm, p: _verdict(arm, p).welch_p, "Welch p", ".2g"),
    ArmColumn("holm_p", lambda arm, p: _verdict(arm, p).holm_p, "Holm p", ".2g"),
    _mean("train_loss", "train loss", ".4f"),
    _mean("val_ppl", "val ppl", ".3f"),
    _mean("test_ppl", None, ".3f"),
    _mean("val_answer_token_acc", "val answer acc", ".3f"),
    _mean("val_exact_match", "val exact", ".3f"),
    _mean("test_answer_token_acc", "test answer acc", ".3f"),
    _mean("test_exact_match", "test exact", ".3f"),
    _mean("tokens_per_sec_median", "tokens/s", ",.0f"),
    _mean("peak_memory_mib", "peak MiB", ",.0f"),
    _mean("wall_time_s", "wall s", ".1f"),
    ArmColumn("lr_chosen_among_complete", lambda arm, _: arm.chosen_among_complete),
)


def arm_rows(protocol: Protocol, columns: Sequence[ArmColumn] = ARM_COLUMNS) -> list[Row]:
    """One dict per arm (ranking order) with a value per column."""
    return [{c.name: c.value(arm, protocol) for c in columns} for arm in protocol.ranking]


def render_arms_csv(rows: Sequence[Row], columns: Sequence[ArmColumn] = ARM_COLUMNS) -> str:
    """arms.csv: a row per arm, laid out as ArmColumn says."""
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
                flat[f"{c.name}_mean"] = value.mean if value else ""
                has_width = value and value.half_width is not None
                flat[f"{c.name}_ci95"] = value.half_width if has_width else ""
                flat[f"{c.name}_n"] = value.n if value else ""
            else:
                flat[c.name] = "" if value is None else value
        writer.writerow(flat)
    return buffer.getvalue()


def format_cell(value: Any, fmt: str) -> str:
    """A value as protocol.md shows it: `mean ± half width`, `mean (n=1)`, or formatted."""
    if value is None:
        return ""
    if isinstance(value, MeanInterval):
        mean = format(value.mean, fmt)
        if value.half_width is None:
            return f"{mean} (n={value.n})"
        return f"{mean} ± {format(value.half_width, fmt)}"
    return format(value, fmt)


PROTOCOL_FIGURES = {
    "protocol_loss_curves.png": "Validation loss per arm: mean over seeds, 95% t-interval band",
    "protocol_final_loss.png": "Final losses per arm: mean over seeds, 95% t-interval bars",
    "protocol_lr_grid.png": "Learning-rate grid: mean val loss over seeds per rate",
}


def _grid_rates(protocol: Protocol) -> list[str | None]:
    """Every arm's rates in increasing value; the config's rate (None) last."""
    rates = list(dict.fromkeys(c.lr for a in protocol.arms for c in a.arm.cells))
    return sorted(rates, key=lambda r: (r is None, learning_rate(r) or 0.0))


def render_protocol_markdown(
    protocol: Protocol,
    rows: Sequence[Row],
    sources: list[str],
    columns: Sequence[ArmColumn] = ARM_COLUMNS,
) -> str:
    """protocol.md: the arm table with how to read it, the learning-rate grid, a warning when
    the arms' seeds differ, the figures."""
    arms = protocol.arms
    lines = ["# Comparison protocol: arms over seeds and learning rates", ""]
    lines += [f"Runs from {', '.join(f'`{s}`' for s in sources)}."]
    rates = [r for r in _grid_rates(protocol) if r is not None]
    seed_counts = sorted({len(a.chosen.runs) for a in arms if a.chosen})
    lines += [
        "",
        f"{len(arms)} arms (runs with the same overrides apart from `seed` and `optim.lr`); "
        f"seeds per arm and rate: {', '.join(map(str, seed_counts)) or 'none'}; learning-rate "
        f"grid: {', '.join(rates) if rates else 'none (the config rate)'}.",
    ]
    seed_sets = {a.arm.label: a.seed_values for a in arms}
    if len(set(seed_sets.values())) > 1:
        lines += [
            "",
            "**Warning: the arms do not share their seeds** ("
            + "; ".join(f"{label}: {seeds or '?'}" for label, seeds in seed_sets.items())
            + "): their means average different initialisations and data orders.",
        ]
    lines += ["", "## Arms, at each arm's chosen learning rate", ""]
    shown = [c for c in columns if c.header and any(row[c.name] not in (None, "") for row in rows)]
    cells = [[format_cell(r[c.name], c.fmt) for c in shown] for r in rows]
    lines += markdown_table([c.header for c in shown], cells)
    lines += ["", *_how_to_read(protocol)]
    if any(len(a.arm.cells) > 1 for a in arms):
        lines += ["", "## Learning-rate grid", "", *_grid_table(protocol)]
    for name, caption in PROTOCOL_FIGURES.items():
        lines += ["", f"## {caption}", "", f"![{caption}]({name})"]
    return "\n".join(lines) + "\n"


def _how_to_read(protocol: Protocol) -> list[str]:
    """The protocol as the reader of protocol.md needs it, next to the table."""
    ranked = (protocol.ranked or "").replace("_", " ")
    tested = sum(v.holm_p is not None for v in protocol.verdicts.values())
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
            f"{tested} arms tested (`Holm p`: the chance that any arm is "
            f"called worse when none is stays under {ALPHA:.0%}); `≈ best`: Holm p ≥ {ALPHA}, "
            f"`worse`: Holm p < {ALPHA}; `untested`: an arm with fewer than 2 seeds. Not "
            "significantly different is not equal (with 3 seeds only large gaps are detected); "
            "the best arm is itself picked by these losses, which widens its gaps to the others: "
            "read a `worse` near the level with care."
        )
    edge = [a.arm.label for a in protocol.arms if a.at_grid_edge]
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
    rates = _grid_rates(protocol)
    table = []
    for a in protocol.ranking:
        by_lr = {c.lr: (c, s) for c, s in a.by_rate}
        cells = []
        for rate in rates:
            cell, s = by_lr.get(rate, (None, None))
            text = format_cell(s, ".4f")
            cells.append(f"**{text}**" if s is not None and cell is a.chosen else text)
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
        for a in protocol.ranking
    }
    finals = {
        a.arm.label: {"val/loss": a.summary("val_loss"), "test/loss": a.summary("test_loss")}
        for a in protocol.ranking
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
