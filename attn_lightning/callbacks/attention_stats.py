"""Attention statistics as scalars at every n-th validation, per layer and per head:
`attn/<layer>/{entropy,distance,local_ratio,softmax_gap}` (means over heads) and
`attn/<layer>/head<h>/{entropy,distance}` (analysis/stats.py defines them)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from attn_lightning.analysis.probe import probe
from attn_lightning.analysis.stats import LOCAL_WINDOW, head_statistics, scalar_metrics
from attn_lightning.callbacks.validation_probe import EveryNValidations, first_validation_inputs


class AttentionStatistics(L.Callback):
    """Statistics of the attention over the first `num_sequences` validation windows, logged to
    every logger at the global step. Rank 0 only; one forward pass of those windows."""

    def __init__(
        self,
        every_n_validations: int = 1,
        num_sequences: int = 8,
        local_window: int = LOCAL_WINDOW,
        per_head: tuple[str, ...] | list[str] = ("entropy", "distance"),
    ) -> None:
        if num_sequences <= 0:
            raise ValueError(f"num_sequences must be positive, got {num_sequences}")
        self.due = EveryNValidations(every_n_validations)
        self.num_sequences = num_sequences
        self.local_window = local_window
        self.per_head = tuple(per_head)
        self._probe: Tensor | None = None

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.loggers or not self.due(trainer):
            return
        if self._probe is None:
            self._probe = first_validation_inputs(trainer, self.num_sequences)
            if self._probe is None:
                return
        layers = probe(pl_module.model, self._probe.to(pl_module.device))
        stats = [head_statistics(a.applied, a.exact, self.local_window) for a in layers]
        metrics = scalar_metrics(stats, self.per_head)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
