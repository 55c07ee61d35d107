"""The suite score: a sweep of token-task runs (MQAR, the MAD tasks, state tracking, ...) as a
leaderboard of variants over tasks, with MAD's aggregation and the protocol's statistics.

Over the runs of a sweep (runs.py):
- a run's task is its data config option (`data=mad_in_context_recall`); its settings are the
  test splits it logs as `test_<setting>/answer_token_acc` (answers only, micro over answer
  tokens), or its `test/answer_token_acc` where it logs none;
- an arm is the runs with the same overrides apart from seed, learning rate and weight decay
  (arms.py; its cells are the (rate, decay) pairs of the grid); its variant is those overrides
  without the task's (`data=...`, `data.<key>=...`, `data/<group>=...`): the attention and any
  other change to the model or training;
- each arm's cell is chosen on validation as the protocol chooses it (protocol.arm_result: the
  lowest mean final val loss over seeds, among the cells whose every seed completed), so the
  choice never sees a test metric;
- the task score of a variant at a seed is the mean accuracy over the settings of its runs of
  that seed at the chosen cells. A task split over several arms by sweep axes
  (`data.vocab_size=16,32`) averages the settings of all of them; a seed missing from one of
  them has no task score;
- the suite score of a seed is the mean of its task scores (MAD's aggregation), for a variant
  with a score on every task of the sweep;
- each score is reported as the mean over seeds with a 95% Student t interval, and marked
  per task (and for the suite) against the best variant, higher being better, by the
  protocol's rule: Welch's test, Holm-adjusted (protocol.verdicts_against_best).

Beside it, MAD's own number (Poli et al. 2024): each setting's best test accuracy over the
grid, the cell chosen on test, then the same means over settings and tasks, with MAD's accuracy
(`answer_macro_acc`: per answer class, averaged over classes) where the runs log it. It is what
the paper's tables report, for a reader comparing with them; it is not our score.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from attn_lightning.comparison.arms import SEED, Arm, Cell, group_arms, override_key, override_value
from attn_lightning.comparison.columns import Row, attention_name
from attn_lightning.comparison.protocol import (
    CONFIDENCE,
    ArmResult,
    Verdict,
    arm_result,
    verdicts_against_best,
)
from attn_lightning.comparison.runs import Run
from attn_lightning.comparison.student_t import MeanInterval, mean_interval
from attn_lightning.runs.record import class_name

TASK_GROUP = "data"  # the overrides of this config group make the task, not the variant
SETTING_METRIC = "answer_token_acc"  # logged per test setting as test_<setting>/<metric>
MAD_METRIC = "answer_macro_acc"  # MAD's accuracy (macro over answer classes), where logged
OVERALL_TEST = "test"  # the split of every setting together: a run's only one when it has no other
UNKNOWN = "?"  # the task of a run that recorded none (killed before it started): left out
SUITE = "suite"  # the score over every task, beside the tasks'
# The recall tasks of recall_vs_state.png: the MQAR family by name, and MAD's recall tasks.
RECALL_FAMILY = "mqar"
MAD_RECALL_TASKS = ("mad_in_context_recall", "mad_fuzzy_recall", "mad_noisy_recall")


def is_task_override(override: str) -> bool:
    """`data=mqar`, `data.vocab_size=32`, `data/point=L64`: an override that sets the task."""
    key = override_key(override)
    return key == TASK_GROUP or key.startswith((f"{TASK_GROUP}.", f"{TASK_GROUP}/"))


def task_of(run: Run) -> str:
    """The run's data config option as recorded; else its `data=` override, else the class of
    its data config (a record from outside Hydra's command line)."""
    if run.record is not None and run.record.data_option:
        return run.record.data_option
    chosen = override_value(run, TASK_GROUP)
    if chosen:
        return chosen
    target = run.record.comparable.get(f"{TASK_GROUP}._target_") if run.record else None
    return class_name(str(target)) if target else UNKNOWN


def is_recall_task(task: str) -> bool:
    return RECALL_FAMILY in task or task in MAD_RECALL_TASKS


def natural_order(name: str) -> list[int | str]:
    """A sort key that puts L32 before L128 (digits compared as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def setting_accuracies(run: Run, metric: str = SETTING_METRIC) -> dict[str, float]:
    """{setting: test answer accuracy} from the run's final metrics; {"test": overall} for a
    run that logs no setting of its own."""
    names = set(run.series) | set(run.record.metrics if run.record else ())
    suffix = f"/{metric}"
    found = {}
    for name in sorted(names, key=natural_order):
        split = name.removesuffix(suffix)
        if name.endswith(suffix) and split.startswith(f"{OVERALL_TEST}_"):
            value = run.final(name)
            if value is not None:
                found[split.removeprefix(f"{OVERALL_TEST}_")] = value
    if not found:
        overall = run.final(f"{OVERALL_TEST}{suffix}")
        if overall is not None:
            found[OVERALL_TEST] = overall
    return found


def has_settings(runs: Iterable[Run]) -> bool:
    """Whether some run logs a per-setting test accuracy: a sweep the suite applies to."""
    return any(set(setting_accuracies(run)) - {OVERALL_TEST} for run in runs)


def seed_of(run: Run) -> str:
    """The run's seed: its override, else the recorded config's, else `?`."""
    seed = override_value(run, SEED)
    if seed is None and run.record is not None:
        seed = run.record.comparable.get(SEED)
    return "?" if seed is None else str(seed)


def seed_order(seed: str) -> tuple[int, str]:
    return (len(seed), seed)


def cell_settings(cell: Cell | None, metric: str = SETTING_METRIC) -> dict[str, dict[str, float]]:
    """{seed: {setting: accuracy}} of the cell's completed runs that logged a setting."""
    found: dict[str, dict[str, float]] = {}
    for run in cell.runs if cell else []:
        accuracies = setting_accuracies(run, metric)
        if run.status == "completed" and accuracies:
            found[seed_of(run)] = accuracies
    return found


@dataclass(frozen=True)
class Part:
    """One arm of a variant on a task: its result (the cell chosen on validation) and the task
    overrides that tell it from the task's other parts (`data.vocab_size=32`; none for a task
    in one arm)."""

    result: ArmResult
    task_overrides: tuple[str, ...]

    @property
    def label(self) -> str:
        return " ".join(self.task_overrides)

    @property
    def chosen(self) -> dict[str, dict[str, float]]:
        """{seed: {setting: accuracy}} at the cell chosen on validation."""
        return cell_settings(self.result.chosen)

    def best_on_test(self) -> dict[str, dict[str, float]]:
        """{seed: {setting: accuracy}}, each setting at the cell of the grid whose seeds have
        the highest mean test accuracy on it: MAD's choice, on test, of MAD's accuracy (macro
        over answer classes) where the runs log it, else of ours."""
        metric = MAD_METRIC if self.logs(MAD_METRIC) else SETTING_METRIC
        cells = [cell_settings(cell, metric) for cell in self.result.arm.cells]
        names = sorted(
            {name for cell in cells for per_seed in cell.values() for name in per_seed},
            key=natural_order,
        )
        found: dict[str, dict[str, float]] = {}
        for name in names:
            scored = [c for c in cells if any(name in s for s in c.values())]
            best = max(scored, key=lambda c: _mean(s[name] for s in c.values() if name in s))
            for seed, accuracies in best.items():
                if name in accuracies:
                    found.setdefault(seed, {})[name] = accuracies[name]
        return found

    def logs(self, metric: str) -> bool:
        """Whether every completed run of the part logs the metric per setting."""
        done = [run for run in self.result.arm.runs if run.status == "completed"]
        return bool(done) and all(set(setting_accuracies(run, metric)) for run in done)


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def task_seed_scores(parts: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, float]:
    """{seed: mean over every part's settings} from each part's {seed: {setting: accuracy}},
    for the seeds every part has."""
    seeds = set.intersection(*(set(part) for part in parts)) if parts else set()
    return {
        seed: _mean(v for part in parts for v in part[seed].values())
        for seed in sorted(seeds, key=seed_order)
    }


@dataclass(frozen=True)
class Score:
    """A variant's score on a task (or the suite): per seed, their mean with its interval, and
    its verdict against the best variant."""

    per_seed: dict[str, float]
    verdict: Verdict = field(default_factory=Verdict)

    @property
    def summary(self) -> MeanInterval | None:
        values = list(self.per_seed.values())
        return mean_interval(values, CONFIDENCE) if values else None


def suite_seed_scores(
    tasks: Mapping[str, Mapping[str, float]], every: Sequence[str]
) -> dict[str, float]:
    """{seed: mean over the tasks} for the seeds with a score on every task of `every`."""
    if any(task not in tasks for task in every) or not every:
        return {}
    seeds = set.intersection(*(set(tasks[task]) for task in every))
    return {
        seed: _mean(tasks[task][seed] for task in every) for seed in sorted(seeds, key=seed_order)
    }


def with_verdicts(scores: Mapping[str, dict[str, float]]) -> dict[str, Score]:
    """Each variant's scores with its verdict against the variant of the highest mean."""
    scored = {variant: values for variant, values in scores.items() if values}
    if not scored:
        return {variant: Score(values) for variant, values in scores.items()}
    best = max(scored, key=lambda variant: _mean(scored[variant].values()))
    samples = {variant: list(values.values()) for variant, values in scored.items()}
    verdicts = verdicts_against_best(best, samples)
    return {
        variant: Score(values, verdicts.get(variant, Verdict()))
        for variant, values in scores.items()
    }


def variant_labels(
    keys: Sequence[tuple[str, ...]], runs: Mapping[tuple[str, ...], list[Run]]
) -> dict[tuple[str, ...], str]:
    """{variant key: label}: the overrides that vary between the variants (as arms.py labels
    arms), else the attention of the variant's runs."""
    shared = set.intersection(*(set(k) for k in keys)) if keys else set()
    labels = {}
    for key in keys:
        varying = [o for o in key if o not in shared]
        attention = next((attention_name(r) for r in runs[key] if attention_name(r)), "")
        labels[key] = " ".join(varying) or attention or " ".join(key) or "all runs"
    return labels


@dataclass(frozen=True)
class Suite:
    """Every variant's task and suite scores, ours (chosen on validation) and MAD's (on test).

    `ours[variant][task]` and `mad[variant][task]` hold a Score for each task the variant ran,
    and `SUITE` for the suite; `parts[variant][task]` the arms behind each."""

    variants: tuple[str, ...]  # by suite score, best first; those without one last
    tasks: tuple[str, ...]  # in the order their first run appears
    parts: dict[str, dict[str, list[Part]]]
    ours: dict[str, dict[str, Score]]
    mad: dict[str, dict[str, Score]]

    @classmethod
    def of(cls, runs: Sequence[Run], rows: Sequence[Row]) -> Suite:
        by_label = {row["job"]: row for row in rows}
        tasks = tuple(t for t in dict.fromkeys(task_of(r) for r in runs) if t != UNKNOWN)
        variant_runs: dict[tuple[str, ...], list[Run]] = {}
        grouped: dict[tuple[str, ...], dict[str, list[Arm]]] = {}
        for task in tasks:
            for arm in group_arms([r for r in runs if task_of(r) == task], weight_decay=True):
                variant = tuple(o for o in arm.key if not is_task_override(o))
                grouped.setdefault(variant, {}).setdefault(task, []).append(arm)
                variant_runs.setdefault(variant, []).extend(arm.runs)
        labels = variant_labels(list(grouped), variant_runs)
        parts = {
            labels[key]: {task: task_parts(arms, by_label) for task, arms in by_task.items()}
            for key, by_task in grouped.items()
        }
        ours = cls._scores(parts, tasks, lambda part: part.chosen)
        mad = cls._scores(parts, tasks, lambda part: part.best_on_test())

        def rank(variant: str) -> tuple[bool, float]:
            summary = ours[variant][SUITE].summary
            return (summary is None, -summary.mean if summary else 0.0)

        return cls(tuple(sorted(parts, key=rank)), tasks, parts, ours, mad)

    @staticmethod
    def _scores(
        parts: Mapping[str, Mapping[str, list[Part]]],
        tasks: Sequence[str],
        pick: Callable[[Part], dict[str, dict[str, float]]],
    ) -> dict[str, dict[str, Score]]:
        """Task and suite scores of every variant, from each part's {seed: {setting: acc}}."""
        per_task = {
            variant: {
                task: task_seed_scores([pick(part) for part in task_parts])
                for task, task_parts in by_task.items()
            }
            for variant, by_task in parts.items()
        }
        scores: dict[str, dict[str, Score]] = {variant: {} for variant in parts}
        for task in (*tasks, SUITE):
            values = {
                variant: suite_seed_scores(mine, tasks) if task == SUITE else mine[task]
                for variant, mine in per_task.items()
                if task == SUITE or task in mine
            }
            for variant, score in with_verdicts(values).items():
                scores[variant][task] = score
        return scores

    @property
    def every_part(self) -> list[Part]:
        return [part for by_task in self.parts.values() for ps in by_task.values() for part in ps]

    def settings(self, variant: str, task: str) -> dict[str, MeanInterval]:
        """{setting: mean and interval over seeds} at the chosen cells; a setting's name is
        prefixed with its part's overrides where several parts of the task share it."""
        per_part = []
        for part in self.parts[variant].get(task, []):
            per_setting: dict[str, list[float]] = {}
            for accuracies in part.chosen.values():
                for name, value in accuracies.items():
                    per_setting.setdefault(name, []).append(value)
            per_part.append((part.label, per_setting))
        counts = Counter(name for _, per_setting in per_part for name in per_setting)
        return {
            (f"{label} {name}" if counts[name] > 1 and label else name): mean_interval(
                values, CONFIDENCE
            )
            for label, per_setting in per_part
            for name, values in per_setting.items()
        }


def task_parts(arms: Sequence[Arm], rows: Mapping[str, Row]) -> list[Part]:
    """The parts of one variant's task: each arm's result, told apart by the task overrides
    that differ between them."""
    own = [[o for o in arm.key if is_task_override(o)] for arm in arms]
    shared = set.intersection(*(set(o) for o in own)) if own else set()
    return [
        Part(arm_result(arm, rows), tuple(o for o in overrides if o not in shared))
        for arm, overrides in zip(arms, own, strict=True)
    ]
