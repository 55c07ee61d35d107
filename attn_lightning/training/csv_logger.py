"""metrics.csv that survives kills and resumes.

Lightning's CSVLogger appends rows to metrics.csv in place (a kill mid-write leaves a torn row
that a reader takes as data) and deletes an existing metrics.csv when a run starts in a dir that
has one, which is exactly what continuing a run in place does. This logger rewrites the whole
file through a temp file and a rename at each flush (every `flush_logs_every_n_steps` steps, at
each checkpoint and at the end), and on resume keeps the rows logged before the checkpoint's
step: the resumed run logs the later steps again, so those rows are replaced, never duplicated.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from attn_lightning.atomic import write_text


class _AtomicWriter(ExperimentWriter):
    """Keeps every row of the run in memory and rewrites metrics.csv atomically on save."""

    def __init__(self, log_dir: str, resume_step: int) -> None:
        self.resume_step = resume_step
        self.rows: list[dict[str, Any]] | None = None  # read from disk at the first save
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        """Lightning deletes metrics.csv here; the history is dealt with at the first save."""

    def _earlier_rows(self) -> list[dict[str, Any]]:
        """Rows of an earlier attempt at this run that come before the resumed step."""
        if self.resume_step <= 0 or not os.path.isfile(self.metrics_file_path):
            return []
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        return [
            {k: v for k, v in row.items() if v != ""}
            for row in rows
            if row.get("step") and int(float(row["step"])) < self.resume_step
        ]

    def save(self) -> None:
        if not self.metrics:
            return
        if self.rows is None:
            self.rows = self._earlier_rows()
        self.rows.extend(self.metrics)
        self.metrics = []
        self.metrics_keys = sorted(set().union(*self.rows))
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.metrics_file_path, text.getvalue())


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger with atomic writes and the run's history kept across a resume.

    Call `resume_at(step)` before training when continuing from a checkpoint at `step`.
    Without it, an existing metrics.csv belongs to an earlier run and is replaced.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resume_step = 0
        self._written_step = -1  # the newest step on disk
        self._checkpointed = False  # a checkpoint was saved since the last write

    @rank_zero_only
    def save(self) -> None:
        """Write every `flush_logs_every_n_steps` steps. Lightning's trainer calls save() after
        every log_metrics, and each write rewrites and fsyncs the whole file, a cost each step
        would pay; each checkpoint and the end of the run write too (`after_save_checkpoint`,
        `finalize`)."""
        pending = self.experiment.metrics
        due = pending and pending[-1]["step"] - self._written_step >= self._flush_logs_every_n_steps
        if due or self._checkpointed:
            self._write()

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """A resume from this checkpoint keeps the rows before its step, so they must reach the
        disk: at the next save, since Lightning checkpoints in `on_train_batch_end`, before it
        logs that batch's row (the last one before the checkpoint's step)."""
        self._checkpointed = True

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._experiment is not None:
            self._write()

    @rank_zero_only
    def _write(self) -> None:
        pending = self.experiment.metrics
        if pending:
            self._written_step = pending[-1]["step"]
        self._checkpointed = False
        self.experiment.save()

    def resume_at(self, step: int) -> None:
        self._resume_step = step
        if self._experiment is not None:
            self._experiment.resume_step = step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AtomicWriter(self.log_dir, self._resume_step)
        return self._experiment
