"""Attention maps as images (TensorBoard's Images tab, MLflow, W&B: training/loggers.py): a fixed
validation sequence through the model at every n-th validation, one image per layer
(`attn/<layer>/maps`), one heatmap per head."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from attn_lightning.analysis.plots import attention_heads, figure_rgb
from attn_lightning.analysis.probe import probe
from attn_lightning.callbacks.validation_probe import EveryNValidations, first_validation_inputs
from attn_lightning.training.loggers import log_image, media_loggers


class AttentionMaps(L.Callback):
    """Logs the attention each layer's heads apply to the probe sequence (the first validation
    window, cut to `max_tokens`), with its characters on the axes when short enough to read.

    Rank 0 only; runs after validation, one forward pass of one sequence. Without a logger that
    takes images (TensorBoard, MLflow, W&B), or with `every_n_validations: 0`, it does nothing.
    """

    def __init__(self, every_n_validations: int = 1, max_tokens: int | None = None) -> None:
        self.due = EveryNValidations(every_n_validations)
        self.max_tokens = max_tokens
        self._probe: Tensor | None = None

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not media_loggers(trainer) or not self.due(trainer):
            return
        if self._probe is None:
            self._probe = first_validation_inputs(trainer, 1)
            if self._probe is None:
                return
            self._probe = self._probe[:, : self.max_tokens]
        idx = self._probe.to(pl_module.device)
        layers = probe(pl_module.model, idx)
        decode = pl_module.tokenizer.decode
        tokens = [decode([i]) for i in idx[0].tolist()]
        step = trainer.global_step
        for layer, attention in enumerate(layers):
            fig = attention_heads(
                attention.applied[0].cpu(), tokens, f"layer {layer} attention at step {step}"
            )
            log_image(trainer, f"attn/{layer}/maps", figure_rgb(fig), step)
