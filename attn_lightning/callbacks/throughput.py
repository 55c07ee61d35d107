"""Training throughput in tokens per second, measured over windows of steps."""

from __future__ import annotations

import time
from typing import Any

import lightning as L


class TokenThroughput(L.Callback):
    """Logs `train/tokens_per_sec` (all ranks together) and `train/tokens_seen`.

    Timing spans `every_n_steps` optimizer steps with no per-step device sync, so the
    measurement itself does not slow training down. Validation time is excluded.
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        if every_n_steps <= 0:
            raise ValueError(f"every_n_steps must be positive, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.tokens_seen = 0
        self._window_tokens = 0
        self._window_start: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self._window_start is None:
            self._window_start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        tokens = batch[0].numel() * trainer.world_size
        self.tokens_seen += tokens
        self._window_tokens += tokens
        if trainer.global_step % self.every_n_steps == 0 and self._window_start is not None:
            elapsed = time.perf_counter() - self._window_start
            metrics = {
                "train/tokens_per_sec": self._window_tokens / elapsed,
                "train/tokens_seen": float(self.tokens_seen),
            }
            pl_module.log_dict(
                metrics, on_step=True, on_epoch=False, prog_bar=True, rank_zero_only=True
            )
            self._window_tokens, self._window_start = 0, None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._window_tokens, self._window_start = 0, None  # do not count evaluation time

    def state_dict(self) -> dict[str, Any]:
        return {"tokens_seen": self.tokens_seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tokens_seen = state_dict["tokens_seen"]
