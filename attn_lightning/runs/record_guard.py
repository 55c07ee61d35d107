"""A run dir's record as it was before this attempt: `.hydra/*.yaml` and summary.json.

Hydra writes the new attempt's config into the run dir, and SweepReport stamps its record
`running`, before the task starts. Resuming in place (`hydra.run.dir=<run dir>
ckpt_path=last`) with a config the checkpoint refuses would then leave a run dir whose record
describes a run that never happened, over the one that made its checkpoints. So the record is
read when the run starts (a Hydra callback, before Hydra's own writes) and written back when
an attempt is refused before it trains (`keep_record_if_refused`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from attn_lightning.atomic import write_bytes
from attn_lightning.errors import find_user_error
from attn_lightning.runs.record import SUMMARY

HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
_previous: dict[Path, bytes] = {}  # the files of this process's run dir before this attempt


class KeepPreviousRecord(Callback):
    """Registered under `hydra.callbacks` (conf/hydra/default.yaml), ahead of SweepReport. Only
    single runs: a multirun's jobs each get a new dir."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _previous.clear()
        run_dir = Path(str(config.hydra.run.dir))
        subdir = config.hydra.output_subdir
        paths = [run_dir / SUMMARY] + (
            [run_dir / subdir / f for f in HYDRA_FILES] if subdir else []
        )
        _previous.update({path: path.read_bytes() for path in paths if path.is_file()})


def restore_previous_record() -> None:
    """Write back the run dir's record files as they were when the run started (if any)."""
    for path, data in _previous.items():
        write_bytes(path, data)


@contextmanager
def keep_record_if_refused() -> Iterator[None]:
    """Around the checks before training: a UserError (a refused resume, a bad config), also
    inside a wrapping error, restores the previous attempt's record, then propagates."""
    try:
        yield
    except Exception as error:
        if find_user_error(error) is not None:
            restore_previous_record()
        raise
