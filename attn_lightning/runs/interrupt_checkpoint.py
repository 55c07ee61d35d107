"""Save a checkpoint when the run is stopped by SIGTERM (preemption, `kill`) or Ctrl-C."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class InterruptCheckpoint(L.Callback):
    """On SIGTERM or SIGINT, write `<dirpath>/last.ckpt` at the current step and say how to
    resume. Lightning turns SIGTERM into an exception after the current batch, so the
    checkpoint is consistent. Other exceptions (bugs, a non-finite loss) write nothing: the
    weights in memory may be the problem."""

    def __init__(self, dirpath: str, filename: str = "last") -> None:
        self.path = Path(dirpath) / f"{filename}.ckpt"

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException | KeyboardInterrupt):
            return
        if trainer.state.fn != "fit" or trainer.global_step == 0:
            return
        trainer.save_checkpoint(self.path)
        rank_zero_info(
            f"\nInterrupted at step {trainer.global_step}: checkpoint saved to {self.path}\n"
            f"Resume with: python -m attn_lightning <same overrides> ckpt_path={self.path}"
        )
