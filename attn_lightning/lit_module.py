"""The LightningModule: builds the GPT from plain config dicts, optimises and logs it.

Everything needed to rebuild the model and its tokenizer is in `hparams` (plain containers),
so a checkpoint alone loads: `LitGPT.load_from_checkpoint(path)`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from attn_lightning.model.gpt import GPT


def warmup_cosine(
    step: int, lr: float, min_lr: float, warmup_steps: int, decay_steps: int
) -> float:
    """Linear warm-up to `lr`, then cosine decay to `min_lr` at `decay_steps` (nanoGPT)."""
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


class LitGPT(L.LightningModule):
    """A GPT language model with AdamW and a warm-up + cosine schedule.

    Args:
        model: GPT config with `_target_` (vocab_size comes from the tokenizer).
        attention: attention factory config (`_target_`, `_partial_: true`, hyperparameters).
        optim: lr, min_lr, warmup_steps, decay_steps, betas, weight_decay.
        tokenizer: the tokenizer's state dict (`_target_` plus its vocabulary).
    """

    def __init__(
        self,
        model: dict[str, Any],
        attention: dict[str, Any],
        optim: dict[str, Any],
        tokenizer: dict[str, Any],
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        for key in ("lr", "min_lr"):
            if not optim[key] > 0:
                raise ValueError(f"optim.{key} must be positive, got {optim[key]}")
        self.tokenizer = instantiate(tokenizer)
        self.model: GPT = instantiate(
            model, vocab_size=self.tokenizer.vocab_size, attention=instantiate(attention)
        )
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_ppl, self.test_ppl = Perplexity(), Perplexity()

    def forward(self, idx: Tensor, targets: Tensor | None = None):
        return self.model(idx, targets)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.model(x, y).loss
        # Not on the progress bar: RichProgressBar reads its metrics every step, which would
        # force a device sync per step (25% of GPU throughput on the baby GPT).
        self.log("train/loss", loss)
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        x, y = batch
        out = self.model(x, y)
        loss_metric, ppl_metric = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_ppl")
        loss_metric.update(out.loss, weight=y.numel())
        ppl_metric.update(out.logits.float(), y)
        self.log(f"{stage}/loss", loss_metric, prog_bar=True)
        self.log(f"{stage}/ppl", ppl_metric)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with weight decay on matrices (and embeddings) only, as nanoGPT."""
        cfg = self.hparams.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {
                "name": "decay",
                "params": [p for p in params if p.dim() >= 2],
                "weight_decay": cfg["weight_decay"],
            },
            {"name": "no_decay", "params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=cfg["lr"], betas=tuple(cfg["betas"]))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: (
                warmup_cosine(
                    step, cfg["lr"], cfg["min_lr"], cfg["warmup_steps"], cfg["decay_steps"]
                )
                / cfg["lr"]
            ),
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"},
        }


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LitGPT:
    """Rebuild a trained LitGPT (model and tokenizer) from a checkpoint file alone."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: pass ckpt_path=<run dir>/checkpoints/last.ckpt "
            "(run dirs live under outputs/)"
        )
    module = LitGPT.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    return module.eval()
