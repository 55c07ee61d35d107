"""Which checkpoint a training run continues from: `ckpt_path` as Lightning reads it.

`ckpt_path` is a file or one of Lightning's names, `last`, `best` or `hpc`; `resume=auto` is an
alias of `ckpt_path=last`. Lightning resolves the names inside `fit`, which is too late here:
the loggers need the checkpoint's step when they are built (metrics.csv keeps the rows before
it, TensorBoard purges its events from it on), and the file is read safely and its model
compared with the run's before anything trains. So the names are resolved here, by
Lightning's rules (`_CheckpointConnector._parse_ckpt_path`), and `fit` gets the file:

- `last`: the newest (by modification time) `last*.ckpt` in the dirpaths of the run's
  ModelCheckpoint callbacks, or the file an interrupt checkpoint writes. None there: a warning
  and a fresh start, as in Lightning (so `ckpt_path=last` can be set before the first attempt).
  A ModelCheckpoint without a dirpath writes where Lightning puts it, under the first logger
  (`<save_dir>/<name>/<version>/checkpoints`, `<default_root_dir>/checkpoints` without one):
  that dir is derived from the logger's config (`lightning_checkpoint_dir`).
- `best`: the file the first ModelCheckpoint (Lightning's `trainer.checkpoint_callback`)
  recorded as its best in that last checkpoint. Lightning's own `fit(ckpt_path="best")` always
  fails (a new trainer's callback knows no best yet); here it resumes from the best step.
  No best recorded: an error.
- `hpc`: the highest `hpc_ckpt_<n>.ckpt` in `trainer.default_root_dir`, the checkpoint of
  Lightning's SLURM requeue; none: an error, as in Lightning. Under SLURM with `ckpt_path`
  unset, Lightning resumes from it by itself, and so does this.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import DictConfig

from attn_lightning.errors import CheckpointError, ConfigError
from attn_lightning.runs.checkpoint import read_checkpoint, tensor_shapes
from attn_lightning.runs.interrupt_checkpoint import InterruptCheckpoint

log = logging.getLogger(__name__)

NAMES = ("last", "best", "hpc")
HPC_PATTERN = re.compile(r"^hpc_ckpt_(\d+)\.ckpt$")


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint `fit` continues from (`path` None: a fresh start), its step, and what
    the run's model is checked against: the checkpoint's hyperparameters and weight shapes."""

    path: str | None = None
    step: int = 0
    hyper_parameters: dict[str, Any] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


def requested_checkpoint(cfg: DictConfig) -> str | None:
    """`ckpt_path`, with `resume=auto` read as `last`; both set to different things is an
    error."""
    ckpt_path = None if cfg.ckpt_path is None else str(cfg.ckpt_path)
    if cfg.get("resume") == "auto":
        if ckpt_path not in (None, "last"):
            raise ConfigError(
                f"resume=auto means ckpt_path=last, but ckpt_path={ckpt_path}: drop resume=auto "
                "to resume from that file, or drop ckpt_path"
            )
        return "last"
    return ckpt_path


def lightning_checkpoint_dir(cfg: DictConfig) -> Path:
    """Where Lightning's ModelCheckpoint writes when it has no dirpath: its
    `__resolve_ckpt_dir(trainer)` reads the first logger's save_dir, name and version, but the
    loggers are built after the resume point (they need its step), so the dir is derived from
    that logger's config, for the loggers whose name and version are those arguments
    (TensorBoard, CSV). A version of null is Lightning's next `version_<n>`: a new, empty dir;
    the checkpoints to resume are in the newest existing one, the previous attempt's."""
    root = Path(cfg.trainer.get("default_root_dir") or os.getcwd())
    loggers = [c for c in (cfg.get("logger") or {}).values() if c is not None]
    if not loggers:
        return root / "checkpoints"
    first = loggers[0]
    logger_class = get_class(first._target_)
    if not issubclass(logger_class, (TensorBoardLogger, CSVLogger)):
        raise ConfigError(
            f"ckpt_path=last: a ModelCheckpoint callback has no dirpath, and where Lightning puts "
            f"its checkpoints under {logger_class.__name__} is only known once that logger runs: "
            "set the callback's dirpath (e.g. ${paths.output_dir}/checkpoints)"
        )
    base_class = TensorBoardLogger if issubclass(logger_class, TensorBoardLogger) else CSVLogger
    defaults = inspect.signature(base_class.__init__).parameters  # a subclass may take **kwargs
    name, version = (first.get(k, defaults[k].default) for k in ("name", "version"))
    base = Path(first.get("save_dir") or root) / str(name)
    if version is None:  # version_<n>: the newest existing one
        numbers = [int(p.name[8:]) for p in base.glob("version_*") if p.name[8:].isdigit()]
        version = max(numbers, default=0)
    return base / (version if isinstance(version, str) else f"version_{version}") / "checkpoints"


def _dirpath(callback: ModelCheckpoint, default_dir: Path | None) -> Path | None:
    return Path(callback.dirpath) if callback.dirpath else default_dir


def last_checkpoints(callbacks: Sequence[Any], default_dir: Path | None = None) -> list[Path]:
    """Every existing last checkpoint of the run's checkpoint callbacks (Lightning's rule);
    `default_dir`: that of a ModelCheckpoint without dirpath (lightning_checkpoint_dir)."""
    candidates: set[Path] = set()
    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint) and _dirpath(callback, default_dir):
            name = re.compile(rf"^{re.escape(callback.CHECKPOINT_NAME_LAST)}(-(\d+))?")
            directory = _dirpath(callback, default_dir)
            if directory.is_dir():
                candidates |= {
                    p
                    for p in directory.iterdir()
                    if p.suffix == callback.FILE_EXTENSION and name.match(p.stem)
                }
        elif isinstance(callback, InterruptCheckpoint):
            candidates.add(callback.path)
        elif isinstance(callback, OnExceptionCheckpoint):
            candidates.add(Path(callback.ckpt_path))
    return [p for p in {Path(os.path.realpath(p)) for p in candidates} if p.is_file()]


def newest_last_checkpoint(
    callbacks: Sequence[Any], default_dir: Path | None = None
) -> Path | None:
    candidates = last_checkpoints(callbacks, default_dir)
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def checkpoint_dirs(callbacks: Sequence[Any], default_dir: Path | None = None) -> str:
    """Where `last` looks, for messages."""
    dirs = {
        str(_dirpath(c, default_dir))
        for c in callbacks
        if isinstance(c, ModelCheckpoint) and _dirpath(c, default_dir)
    }
    dirs |= {str(c.path.parent) for c in callbacks if isinstance(c, InterruptCheckpoint)}
    return ", ".join(sorted(dirs)) or "(no checkpoint callback has a dirpath)"


def recorded_best_checkpoint(
    callbacks: Sequence[Any], trusted: Sequence[str], default_dir: Path | None = None
) -> Path:
    """`ckpt_path=best`: the best checkpoint that the first ModelCheckpoint recorded in the
    newest last checkpoint (its `best_model_path`; looked for in its dirpath too, for a moved
    run dir). A run dir's best checkpoint without its callbacks is runs/paths.py's."""
    monitors = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    if not monitors:
        raise ConfigError("ckpt_path=best needs a ModelCheckpoint callback (callbacks.*)")
    first = monitors[0]
    last = newest_last_checkpoint(callbacks, default_dir)
    if last is None:
        raise CheckpointError(
            f"ckpt_path=best: no last checkpoint in {checkpoint_dirs(callbacks, default_dir)} "
            "records a best "
            "one; pass ckpt_path=<file> or ckpt_path=last"
        )
    state = read_checkpoint(last, trusted=trusted).get("callbacks", {}).get(first.state_key, {})
    recorded = str(state.get("best_model_path") or "")
    candidates = [Path(recorded), Path(str(_dirpath(first, default_dir))) / Path(recorded).name]
    found = next((p for p in candidates if recorded and p.is_file()), None)
    if found is None:
        what = f"records {recorded}, which is gone" if recorded else "records no best checkpoint"
        raise CheckpointError(
            f"ckpt_path=best: {last} {what} (monitor={first.monitor}); pass ckpt_path=<file> "
            "or ckpt_path=last"
        )
    return found


def hpc_checkpoint(root_dir: str | Path) -> Path | None:
    """Lightning's SLURM requeue checkpoint: the highest `hpc_ckpt_<n>.ckpt` in root_dir."""
    root = Path(root_dir)
    versions = [
        int(match.group(1))
        for p in (root.iterdir() if root.is_dir() else ())
        if (match := HPC_PATTERN.match(p.name))
    ]
    return root / f"hpc_ckpt_{max(versions)}.ckpt" if versions else None


def checkpoint_file(
    requested: str | None,
    callbacks: Sequence[Any],
    root_dir: str | Path,
    trusted: Sequence[str],
    default_dir: Path | None = None,
) -> Path | None:
    """The file `requested` (a path or a name) stands for; None: start fresh. `default_dir`:
    the dir of a ModelCheckpoint without dirpath (lightning_checkpoint_dir)."""
    if requested is None:
        hpc = hpc_checkpoint(root_dir) if SLURMEnvironment.detect() else None
        if hpc is not None:
            log.info("SLURM job with %s: resuming from it, as Lightning does", hpc)
        return hpc
    if requested == "last":
        last = newest_last_checkpoint(callbacks, default_dir)
        if last is None:
            log.warning(
                "ckpt_path=last: no last checkpoint in %s, starting fresh",
                checkpoint_dirs(callbacks, default_dir),
            )
        else:
            log.info("ckpt_path=last: resuming from %s", last)
        return last
    if requested == "best":
        best = recorded_best_checkpoint(callbacks, trusted, default_dir)
        log.info("ckpt_path=best: resuming from %s", best)
        return best
    if requested == "hpc":
        hpc = hpc_checkpoint(root_dir)
        if hpc is None:
            raise CheckpointError(
                f"ckpt_path=hpc: no hpc_ckpt_<n>.ckpt in {root_dir} (trainer.default_root_dir); "
                "pass ckpt_path=<file> or ckpt_path=last"
            )
        return hpc
    return Path(requested)


def resume_point(
    cfg: DictConfig, callbacks: Sequence[Any], trusted: Sequence[str] = ()
) -> ResumePoint:
    """Where this run continues from. The file is read now (safely: `read_checkpoint`), so a
    missing, corrupted or unsafe checkpoint fails before any training starts."""
    root_dir = cfg.trainer.get("default_root_dir") or os.getcwd()
    requested = requested_checkpoint(cfg)
    undirected = any(isinstance(c, ModelCheckpoint) and not c.dirpath for c in callbacks)
    default_dir = lightning_checkpoint_dir(cfg) if undirected and requested in NAMES else None
    path = checkpoint_file(requested, callbacks, root_dir, trusted, default_dir)
    if path is None:
        return ResumePoint()
    checkpoint = read_checkpoint(path, trusted=trusted)
    return ResumePoint(
        path=str(path),
        step=int(checkpoint.get("global_step", 0)),
        hyper_parameters=dict(checkpoint.get("hyper_parameters", {})),
        shapes=tensor_shapes(checkpoint["state_dict"]),
    )
