"""The training progress bar, reading its metrics only when the loggers write new values."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """Lightning's RichProgressBar, whose metrics column is read during training only at the
    steps the loggers write (every `trainer.log_every_n_steps`), and at most `refresh_rate`
    times a second, the rate at which the bar is drawn.

    Lightning's bar reads every progress-bar metric after each training step as a Python float
    (a device sync per step on an accelerator). Ours are logged only on the steps the loggers
    write (training/lit_module.py, the callbacks), so reading them in between shows nothing
    new, and on a fast step a time limit alone would still read nearly every step. A metric a
    user logs every step shows its value as of the last logging step, as the logs do. The step
    count still advances every step, and validation's metrics are read when it ends, as
    Lightning does. With `log_every_n_steps: 0` (no logging) the time limit alone applies.
    """

    def __init__(self, refresh_rate: int = 10, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self._next_metrics_read = 0.0  # time.monotonic() of the next read

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        initialize = getattr(self, "_initialize_train_progress_bar_id", None)  # lightning >= 2.5
        if initialize is not None and not self.is_disabled and self.train_progress_bar_id is None:
            initialize()  # as Lightning's: a resume mid-epoch (2.4 sets the bar at epoch start)
        self._update(self.train_progress_bar_id, batch_idx + 1)
        every = trainer.log_every_n_steps
        now = time.monotonic()
        if (not every or trainer.global_step % every == 0) and now >= self._next_metrics_read:
            self._next_metrics_read = now + 1 / self.refresh_rate if self.refresh_rate else now
            self._update_metrics(trainer, pl_module)
        self.refresh()
