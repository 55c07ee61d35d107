"""A validation at the last training step, whatever `trainer.val_check_interval` is.

Lightning validates every `val_check_interval` steps and, with step-based validation
(`check_val_every_n_epoch: null`), not at the end of training: a 150-step run with the
default interval of 250 has no val/loss at all, so its sweep's loss figure is empty, its
checkpoint has no "best" and an Optuna trial's objective is None.

How: at the last step this callback sets `trainer.should_stop`, the request EarlyStopping
makes. Lightning's training loop validates on a stop request before it stops
(`_TrainingEpochLoop._should_check_val_fx`: "allow validation if requesting to stop early"),
so the final validation is Lightning's own: the same loop, logging, ModelCheckpoint
(best and last.ckpt) and progress bar, never a second validation when the last step is a
validation step anyway. Lightning has no switch for this; calling `trainer.validate()` inside
fit is not allowed, and running the validation loop by hand would repeat its internals.
(Epoch-based validation, `check_val_every_n_epoch: N`, still validates only on every Nth
epoch: the stop request does not override that.)
"""

from __future__ import annotations

from typing import Any

import lightning as L


class ValidateAtLastStep(L.Callback):
    """Requests a stop (and so a validation) after the optimizer step that reaches
    `trainer.max_steps`."""

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True
