"""A sweep's runs grouped into arms: the same overrides apart from the seed and the learning
rate. An arm is one configuration (a variant); its runs at one learning rate are a cell, whose
seeds the protocol averages (comparison/protocol.py).

Runs are told apart by their command-line overrides (`.hydra/overrides.yaml`), the only record
of what a sweep varied: `seed=1338` and `optim.lr=0.003` are the protocol's own axes, every
other override (`attention=gla`) makes an arm of its own. The suite (suite.py) grids weight
decay too, as MAD does: its cells are the (learning rate, weight decay) pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attn_lightning.comparison.runs import Run

SEED = "seed"
LEARNING_RATE = "optim.lr"
WEIGHT_DECAY = "optim.weight_decay"
PROTOCOL_AXES = (SEED, LEARNING_RATE)
# Comparable settings (sweep_report's like_with_like) that follow the seed: they differ
# between the seeds of an arm on purpose, not as a flaw of the comparison.
SEED_SETTINGS = ("seed", "data.seed")


def override_key(override: str) -> str:
    """`+optim.lr=0.003` -> `optim.lr`: the config key an override sets."""
    return override.split("=", 1)[0].lstrip("+~")


def override_value(run: Run, key: str) -> str | None:
    """The value the run's overrides give `key` (the last one wins, as in Hydra), else None."""
    values = [o.split("=", 1)[1] for o in run.overrides if "=" in o and override_key(o) == key]
    return values[-1] if values else None


def arm_key(run: Run, axes: Sequence[str] = PROTOCOL_AXES) -> tuple[str, ...]:
    """The run's overrides without the protocol's axes (seed, learning rate)."""
    return tuple(o for o in run.overrides if override_key(o) not in axes)


def seeds_swept(runs: Sequence[Run]) -> bool:
    """Whether the runs' seeds come from their overrides and differ: a sweep over seeds."""
    seeds = {override_value(r, SEED) for r in runs}
    return None not in seeds and len(seeds) > 1


def learning_rate(text: str | None) -> float | None:
    """An `optim.lr` override as a number (None: the config's rate, or not a number)."""
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


@dataclass
class Cell:
    """The runs of one arm at one learning rate (and weight decay, where it is gridded): its
    seeds."""

    lr: str | None  # the override's text; None: the config's rate (no optim.lr override)
    runs: list[Run]
    weight_decay: str | None = None  # the override's text, where weight decay is gridded

    @property
    def lr_value(self) -> float | None:
        return learning_rate(self.lr)

    @property
    def label(self) -> str:
        """`lr=0.001 wd=0.1`: the cell's rates as their overrides give them."""
        wd = f" wd={self.weight_decay}" if self.weight_decay is not None else ""
        return f"lr={self.lr or 'config'}{wd}"


@dataclass
class Arm:
    """Runs with the same overrides apart from seed and learning rate."""

    key: tuple[str, ...]
    label: str  # the overrides that tell it from the other arms, e.g. `attention=gla`
    cells: list[Cell]  # one per learning rate, in increasing rate

    @property
    def runs(self) -> list[Run]:
        return [run for cell in self.cells for run in cell.runs]


def _rate_order(cell: Cell) -> tuple:
    value, decay = cell.lr_value, learning_rate(cell.weight_decay)
    return (
        (value is None, value if value is not None else 0.0, cell.lr or ""),
        (decay is None, decay if decay is not None else 0.0, cell.weight_decay or ""),
    )


def group_arms(runs: Sequence[Run], weight_decay: bool = False) -> list[Arm]:
    """Arms in the order their first run appears, cells in increasing learning rate (then
    weight decay). `weight_decay`: grid `optim.weight_decay` with the rate (the suite's cells),
    rather than make an arm of each value."""
    axes = (*PROTOCOL_AXES, WEIGHT_DECAY) if weight_decay else PROTOCOL_AXES
    grouped: dict[tuple[str, ...], dict[tuple[str | None, str | None], list[Run]]] = {}
    for run in runs:
        cells = grouped.setdefault(arm_key(run, axes), {})
        decay = override_value(run, WEIGHT_DECAY) if weight_decay else None
        cells.setdefault((override_value(run, LEARNING_RATE), decay), []).append(run)
    shared = set.intersection(*(set(key) for key in grouped)) if grouped else set()
    arms = []
    for key, cells in grouped.items():
        varying = [o for o in key if o not in shared]
        label = " ".join(varying) or " ".join(key) or "all runs"
        made = (Cell(lr, members, decay) for (lr, decay), members in cells.items())
        arms.append(Arm(key, label, sorted(made, key=_rate_order)))
    return arms


def deliberate_settings(runs: Sequence[Run]) -> set[str]:
    """Comparable settings that differ on purpose in these runs: the seed's, in a sweep over
    seeds (whether the arms share their seeds is protocol.md's check)."""
    return set(SEED_SETTINGS) if seeds_swept(runs) else set()
