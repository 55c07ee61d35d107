"""Saved runs as a comparison reads them: a run dir's record (`summary.json`, see
runs/record.py), `.hydra/overrides.yaml` and `csv/metrics.csv`, whatever state the run was left in.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from attn_lightning.errors import UserError
from attn_lightning.runs.record import SUMMARY, RunRecord, read_record

OVERRIDES = Path(".hydra") / "overrides.yaml"
METRICS_CSV = Path("csv") / "metrics.csv"


def first_line(error: BaseException) -> str:
    """`Type: first line of the message`: enough to tell failures apart in a table."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


@dataclass
class Run:
    """One run (a job of a sweep) as found on disk."""

    label: str  # the job's dir relative to what was compared, e.g. "3" or "10-02-11/3"
    path: Path
    record: RunRecord | None  # None: no summary.json (killed before it started, or not a run)
    overrides: list[str]
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # from the CSV

    @property
    def status(self) -> str:
        """running, completed or failed as recorded; incomplete when nothing says."""
        return (self.record.status if self.record else None) or "incomplete"

    def final(self, metric: str) -> float | None:
        """The metric's last logged value (CSV), else the record's final value."""
        points = self.series.get(metric)
        if points:
            return points[-1][1]
        return self.record.metrics.get(metric) if self.record else None


def read_metrics_csv(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Lightning's CSVLogger file as {metric: [(step, value), ...]} (empty cells skipped)."""
    if not path.is_file():
        return {}
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                step = int(float(row.get("step") or "nan"))
            except ValueError:
                continue
            for name, cell in row.items():
                if name in ("step", "epoch") or not cell:
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    continue
                if not math.isnan(value):
                    series.setdefault(name, []).append((step, value))
    return series


def _overrides(run_dir: Path, record: RunRecord | None) -> list[str]:
    try:
        typed = yaml.safe_load((run_dir / OVERRIDES).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        typed = None
    if isinstance(typed, list):
        return [str(o) for o in typed]
    return [str(o) for o in record.overrides] if record else []


def _is_run_dir(path: Path) -> bool:
    return (path / OVERRIDES).is_file() or (path / SUMMARY).is_file()


def _job_key(path: Path) -> tuple:
    """Numeric job dirs in numeric order (2 before 10), others after by name."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts)


def find_run_dirs(root: Path) -> list[Path]:
    """root itself when it is a run dir, else every run dir below it (a sweep's jobs)."""
    if _is_run_dir(root):
        return [root]
    found = {p.parent.parent for p in root.rglob(str(OVERRIDES))}
    found |= {p.parent for p in root.rglob(SUMMARY)}
    return sorted(found, key=lambda p: _job_key(p.relative_to(root)))


def load_runs(roots: list[Path]) -> list[Run]:
    """Every run under the given sweep (or run) dirs, in order. Labels are paths relative to the
    sweep dir, prefixed by the sweep's own path when several sweeps are combined.

    Raises UserError for a dir that does not exist or holds no run."""
    roots = list(dict.fromkeys(Path(r).expanduser() for r in roots))  # each sweep once
    for root in roots:
        if not root.is_dir():
            raise UserError(f"{root} is not a directory: pass a sweep dir (outputs/multirun/...)")
    common = Path(*_common_parts([r.resolve() for r in roots])) if len(roots) > 1 else None
    runs: list[Run] = []
    for root in roots:
        dirs = find_run_dirs(root)
        if not dirs:
            raise UserError(
                f"{root} holds no runs (no {SUMMARY} or {OVERRIDES.as_posix()} below it): pass "
                "a sweep dir such as outputs/multirun/<date>/<time>, or a run dir"
            )
        for run_dir in dirs:
            base = common if common is not None else root.resolve()
            label = run_dir.resolve().relative_to(base).as_posix()
            if label == ".":
                label = run_dir.resolve().name
            record = read_record(run_dir)
            runs.append(
                Run(
                    label=label,
                    path=run_dir,
                    record=record,
                    overrides=_overrides(run_dir, record),
                    series=read_metrics_csv(run_dir / METRICS_CSV),
                )
            )
    return runs


def _common_parts(paths: list[Path]) -> tuple[str, ...]:
    parts = [p.parts for p in paths]
    common: list[str] = []
    for column in zip(*parts, strict=False):
        if len(set(column)) != 1:
            break
        common.append(column[0])
    # keep at least each sweep's own dir name in its labels
    shortest = min(len(p) for p in parts)
    return tuple(common[: shortest - 1]) or ("/",)
