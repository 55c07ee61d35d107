"""What happens when the training loss becomes NaN or infinite (`on_nonfinite_loss`).

`stop`: training ends with a message naming the step and the last good checkpoint, and weights
touched by a bad update are never saved. `skip`: the batch is skipped (no backward, no update)
up to `max_nonfinite_skips` times, then it stops.

On CPU a per-step check is free. On an accelerator it would force a device sync every step, so
only `skip` (which must decide before the update) pays for it; `stop` records the first bad
step on the device and reads it back at log intervals and before any checkpoint is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from attn_lightning.errors import ConfigError, UserError

log = logging.getLogger(__name__)

POLICIES = ("stop", "skip")


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite."""


class NonFiniteLossGuard:
    """Args:
    policy: `stop` or `skip`.
    max_skips: batches `skip` may skip before it stops too.
    last_checkpoint: returns the newest checkpoint written so far (named when stopping).
    """

    def __init__(
        self, policy: str, max_skips: int, last_checkpoint: Callable[[], Path | None]
    ) -> None:
        if policy not in POLICIES:
            raise ConfigError(
                f"on_nonfinite_loss={policy!r} is unknown: choose {' or '.join(POLICIES)}"
            )
        self.policy = policy
        self.max_skips = max_skips
        self.last_checkpoint = last_checkpoint
        self.count = 0  # non-finite losses seen
        self.first_bad_step: Tensor | None = None  # device-side record (accelerators)

    def checks_every_step(self, device: torch.device) -> bool:
        """Whether each loss is read back at once (else recorded on the device)."""
        return self.policy == "skip" or device.type == "cpu"

    def skip_batch(self, loss: Tensor, step: int, check_now: bool) -> bool:
        """Called with every training loss: True when this batch must be skipped (no backward).

        `check_now`: a step on which a deferred (device-side) record is read back."""
        if self.checks_every_step(loss.device):
            if torch.isfinite(loss):
                return False
            self.count += 1
            if self.policy == "skip" and self.count <= self.max_skips:
                log.warning("non-finite loss %s at step %d: batch skipped", loss.item(), step)
                return True
            self._stop(
                f"training loss is {loss.item()} at step {step}; stopped before the bad update. "
            )
        if self.first_bad_step is None:
            self.first_bad_step = torch.full((), -1, device=loss.device)
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, step, self.first_bad_step)
        if check_now:
            self.raise_if_recorded()
        return False

    def raise_if_recorded(self) -> None:
        """Stop if a non-finite loss was recorded on the device (one device sync)."""
        if self.first_bad_step is not None and int(self.first_bad_step) >= 0:
            self.count += 1
            self._stop(
                f"training loss became non-finite at step {int(self.first_bad_step)}; weights "
                "updated since then are discarded. "
            )

    def _stop(self, what: str) -> None:
        last_good = self.last_checkpoint()
        raise NonFiniteLossError(
            what
            + f"({self.count} non-finite so far) "
            + (
                f"Last good checkpoint: {last_good} (resume with ckpt_path={last_good}). "
                if last_good
                else "No checkpoint was written yet. "
            )
            + "Lower optim.lr, check the data, or set on_nonfinite_loss=skip."
        )
