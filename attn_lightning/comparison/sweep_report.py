"""A Hydra callback (not a Lightning one): each job's record (summary.json, runs/record.py) is
stamped with how the job started and ended, and a multirun's sweep dir gets the comparison of
its jobs (comparison/report.py).

Registered under `hydra.callbacks` in conf/hydra/default.yaml, so every sweep of
`python -m attn_lightning -m ...` gets `comparison.md`, `comparison.csv` and the figures; single
runs get their stamped record only. `python -m attn_lightning.compare` rebuilds the same
report from the saved runs.

Why the comparison is rewritten after every job and not only in `on_multirun_end`: Hydra's
basic sweeper re-raises a failed job's error once the batch is done, and `on_multirun_end` then
never runs. Written after each job, the report is current during a long sweep and complete when
a job fails; `on_multirun_end` writes it once more for launchers that run jobs elsewhere.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from attn_lightning.analysis.report import flatten
from attn_lightning.comparison.report import compare_runs
from attn_lightning.comparison.runs import first_line
from attn_lightning.errors import UserError
from attn_lightning.runs.record import update_record

log = logging.getLogger(__name__)


def _rank_zero() -> bool:
    """False in the child processes of a DDP job: they share rank 0's run dir."""
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK"))


class SweepReport(Callback):
    """Args:
    like_with_like: config keys every job of a fair comparison shares (data, steps, seed);
        recorded per job, and jobs that differ from the others are flagged in the report.
    ignore: keys below those that say where things are stored, not what they are.
    every_job: rewrite the sweep's comparison after each job (see the module docstring).
    """

    def __init__(
        self,
        like_with_like: Sequence[str] = ("data", "trainer.max_steps", "seed"),
        ignore: Sequence[str] = ("data.data_dir", "data.path", "data.url"),
        every_job: bool = True,
    ) -> None:
        self.like_with_like = list(like_with_like)
        self.ignore = set(ignore)
        self.every_job = every_job
        self._started: float | None = None

    def comparable(self, config: DictConfig) -> dict[str, Any]:
        """The resolved values of `like_with_like`, flattened, `ignore` left out."""
        values: dict[str, Any] = {}
        for key in self.like_with_like:
            try:
                node = OmegaConf.select(config, key, throw_on_missing=True)
                value = (
                    OmegaConf.to_container(node, resolve=True)
                    if OmegaConf.is_config(node)
                    else node
                )
            except Exception as error:  # an unresolvable value must not cost the job its summary
                value = f"<unresolved: {first_line(error)}>"
            values.update(flatten(value, f"{key}.") if isinstance(value, dict) else {key: value})
        return {k: v for k, v in values.items() if k not in self.ignore}

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _rank_zero():
            return
        self._started = time.perf_counter()
        update_record(
            config.hydra.runtime.output_dir,
            status="running",
            error=None,
            wall_time_s=None,
            overrides=list(config.hydra.overrides.task),
            comparable=self.comparable(config),
            # jobs that share a process share its peak-memory counters (see the report)
            process=f"{socket.gethostname()}:{os.getpid()}",
        )

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not _rank_zero():
            return
        completed = job_return.status == JobStatus.COMPLETED
        # the exception itself: the public `return_value` re-raises it
        error = None if completed else job_return._return_value
        elapsed = time.perf_counter() - self._started if self._started is not None else None
        update_record(
            config.hydra.runtime.output_dir,
            status="completed" if completed else "failed",
            error=first_line(error) if isinstance(error, BaseException) else None,
            wall_time_s=elapsed,
        )
        self._started = None
        if self.every_job and config.hydra.mode == RunMode.MULTIRUN:
            self.write(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.write(Path(config.hydra.sweep.dir))

    def write(self, sweep_dir: Path) -> None:
        try:
            files = compare_runs([sweep_dir], sweep_dir)
        except UserError as error:  # no job got as far as its run dir
            log.warning("no sweep comparison: %s", error)
            return
        log.info("sweep comparison written to %s", files[1] if len(files) > 1 else sweep_dir)
