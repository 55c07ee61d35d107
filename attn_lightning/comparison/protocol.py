"""The comparison protocol: a sweep's runs as arms over seeds and a learning-rate grid, written
to `protocol.md` and `arms.csv`.

An arm is the runs with the same overrides apart from `seed` and `optim.lr` (arms.py). For each
arm:
- the learning rate is chosen on validation: the rate whose seeds have the lowest mean final
  val loss (among the rates whose every seed completed, when there is one). Its test metrics are
  those of the runs at that rate, so the choice never sees the test split;
- every final metric is the mean over its seeds with a 95% Student t interval,
  mean ± t_{0.975, n-1} · s / √n (student_t.py); one seed has no interval;
- arms are ranked on mean test loss (val loss when some arm has no test), and each is tested
  against the best with Welch's two-sided t-test, its p-value Holm-adjusted over all the arms
  tested (multiple_comparisons.py): `≈ best` where the adjusted p is 5% or more, `worse` where
  it is below, `untested` where an arm has fewer than two seeds.

The per-run values come from the comparison's own column spec (columns.py), so an arm averages
exactly what the per-run table shows. protocol_report.py writes the files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from attn_lightning.comparison.arms import SEED, Arm, Cell, group_arms, override_value
from attn_lightning.comparison.columns import Row
from attn_lightning.comparison.multiple_comparisons import holm_adjusted
from attn_lightning.comparison.runs import Run
from attn_lightning.comparison.student_t import MeanInterval, WelchTest, mean_interval, welch_test

CONFIDENCE = 0.95
ALPHA = 0.05  # family-wise level (Holm) for "indistinguishable from the best"
SELECTION_METRIC = "val_loss"  # a per-run column: what the learning rate is chosen on
TEST_METRIC = "test_loss"  # ranked on when every arm has it, else SELECTION_METRIC


def _completed(rows: Mapping[str, Row], cell: Cell | None, metric: str) -> list[float]:
    """The metric of the cell's completed runs."""
    picked = [rows[run.label] for run in cell.runs] if cell else []
    return [r[metric] for r in picked if r["status"] == "completed" and r[metric] is not None]


def _summary(values: Sequence[float]) -> MeanInterval | None:
    return mean_interval(values, CONFIDENCE) if values else None


@dataclass(frozen=True)
class ArmResult:
    """An arm with its per-run rows, the selection metric at every rate and the chosen rate."""

    arm: Arm
    rows: dict[str, Row]  # run label -> its comparison row
    by_rate: tuple[tuple[Cell, MeanInterval | None], ...]  # the selection metric per rate
    chosen: Cell | None
    chosen_among_complete: bool  # False: no rate had every seed complete; chosen among the rest

    def values(self, metric: str) -> list[float]:
        """The metric of the chosen rate's completed runs."""
        return _completed(self.rows, self.chosen, metric)

    def summary(self, metric: str) -> MeanInterval | None:
        return _summary(self.values(metric))

    @property
    def seed_values(self) -> str:
        """The seeds of the chosen rate (else of the first), `;`-separated in numeric order."""
        cell = self.chosen or (self.arm.cells[0] if self.arm.cells else None)
        seeds = sorted(str(override_value(r, SEED) or "") for r in cell.runs) if cell else []
        return ";".join(sorted(seeds, key=lambda s: (len(s), s)))

    @property
    def at_grid_edge(self) -> bool:
        """Whether the chosen rate is the smallest or largest of a grid of two or more rates."""
        rates = [c.lr_value for c in self.arm.cells if c.lr_value is not None]
        chosen = self.chosen.lr_value if self.chosen else None
        return len(rates) > 1 and chosen is not None and chosen in (min(rates), max(rates))


def arm_result(arm: Arm, rows: Mapping[str, Row]) -> ArmResult:
    """The arm's result, its rate chosen on validation (module docstring)."""
    own = {run.label: rows[run.label] for run in arm.runs}
    by_rate = tuple((cell, _summary(_completed(own, cell, SELECTION_METRIC))) for cell in arm.cells)
    scored = [(cell, s) for cell, s in by_rate if s is not None]
    complete = [(cell, s) for cell, s in scored if s.n == len(cell.runs)]
    pool = complete or scored
    chosen = min(pool, key=lambda cs: cs[1].mean)[0] if pool else None
    return ArmResult(arm, own, by_rate, chosen, bool(complete) or not scored)


@dataclass(frozen=True)
class Verdict:
    """An arm against the best: `best`, `≈ best`, `worse`, `untested: one seed`, or "" for an
    arm without the ranked metric; with its Welch test and Holm-adjusted p-value."""

    mark: str = ""
    test: WelchTest | None = None
    holm_p: float | None = None

    @property
    def welch_p(self) -> float | None:
        return self.test.p if self.test else None


def verdicts_against_best(best: str, samples: Mapping[str, Sequence[float]]) -> dict[str, Verdict]:
    """Each sample's verdict against the best one's (module docstring): Welch's test of its
    values (seeds) against the best's, the p-values Holm-adjusted over all those tested."""
    tests = {label: welch_test(values, samples[best]) for label, values in samples.items()}
    tests.pop(best)
    adjusted = holm_adjusted({label: t.p for label, t in tests.items() if t is not None})
    verdicts = {best: Verdict("best")}
    for label, test in tests.items():
        p = adjusted.get(label)
        mark = "untested: one seed" if p is None else "≈ best" if p >= ALPHA else "worse"
        verdicts[label] = Verdict(mark, test, p)
    return verdicts


@dataclass(frozen=True)
class Protocol:
    """Every arm's result, the metric ranked on, the best arm and each arm's verdict."""

    arms: tuple[ArmResult, ...]  # in the order of group_arms
    ranked: str | None
    best: ArmResult | None
    ranking: tuple[ArmResult, ...]  # by mean of the ranked metric, best first; without it last
    verdicts: dict[str, Verdict]  # arm label -> its verdict against the best

    @classmethod
    def of(cls, runs: Sequence[Run], rows: Sequence[Row]) -> Protocol:
        by_label = {row["job"]: row for row in rows}
        arms = tuple(arm_result(arm, by_label) for arm in group_arms(runs))
        if arms and all(a.values(TEST_METRIC) for a in arms):
            ranked: str | None = TEST_METRIC
        else:  # rank the arms that have val loss
            ranked = SELECTION_METRIC if any(a.values(SELECTION_METRIC) for a in arms) else None
        summaries = [(a, a.summary(ranked) if ranked else None) for a in arms]
        scored = [(a, s) for a, s in summaries if s is not None]
        best = min(scored, key=_rank_key)[0] if scored else None
        verdicts = {a.arm.label: Verdict() for a in arms}
        if best is not None and ranked is not None:
            samples = {a.arm.label: a.values(ranked) for a, _ in scored}
            verdicts.update(verdicts_against_best(best.arm.label, samples))
        ranking = tuple(a for a, _ in sorted(summaries, key=_rank_key))
        return cls(arms, ranked, best, ranking, verdicts)


def _rank_key(scored: tuple[ArmResult, MeanInterval | None]) -> tuple[bool, float]:
    """Lower mean first; an arm without the ranked metric last."""
    s = scored[1]
    return (s is None, s.mean if s else 0.0)
