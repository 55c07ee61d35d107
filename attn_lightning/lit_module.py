"""The LightningModule: builds the GPT from plain config dicts, optimises and logs it.

Everything needed to rebuild the model and its tokenizer is in `hparams` (plain containers),
so a checkpoint alone loads: `LitGPT.load_from_checkpoint(path)`.

Evaluation logs, per stage (`val`, `test`, and `test_long` for tasks): `loss` and `ppl` per
token, `bpc` (bits per character, so character and BPE models compare), and on synthetic tasks
(a datamodule with `answer_metrics`) `answer_token_acc` (teacher forced) and `exact_match`
(the whole answer right under greedy decoding).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch import Tensor
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import Perplexity

from attn_lightning.checkpoint import read_checkpoint
from attn_lightning.errors import ConfigError, UserError
from attn_lightning.model.gpt import GPT

log = logging.getLogger(__name__)

IGNORE = -100  # targets the loss skips: padding and the prompts of synthetic tasks
METRICS = ("loss", "ppl", "bpc", "answer_token_acc", "exact_match")  # per evaluation stage


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite."""


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


class BitsPerCharacter(Metric):
    """Total nats over the targets / (ln 2 * characters those targets decode to)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nats", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("chars", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, total_nats: Tensor, num_chars: Tensor) -> None:
        self.nats += total_nats.detach().float()
        self.chars += num_chars.float()

    def compute(self) -> Tensor:
        return self.nats / (math.log(2) * self.chars)


@torch.no_grad()
def greedy_answers(model: GPT, inputs: Tensor, targets: Tensor) -> Tensor:
    """Answers produced by greedy decoding, not teacher forced, for a task batch.

    Row b's answer is its kept targets (`targets[b] != -100`, one contiguous run starting at
    position s); its prompt is `inputs[b, : s + 1]`. The model generates as many tokens as the
    reference answer holds (its end token included, so stopping early or late is an error).
    Returns (B, T) with the generated tokens where targets are kept and -100 elsewhere: compare
    it with `targets`.
    """
    mask = targets != IGNORE  # (B, T)
    starts, lengths = mask.int().argmax(dim=1), mask.sum(dim=1)  # (B,), (B,)
    produced = torch.full_like(targets, IGNORE)
    for start, length in torch.stack([starts, lengths], 1).unique(dim=0).tolist():
        if length == 0:
            continue
        rows = (starts == start) & (lengths == length)
        out = model.generate(inputs[rows, : start + 1], length, temperature=0)
        produced[rows, start : start + length] = out[:, start + 1 :]
    return produced


def exact_matches(produced: Tensor, targets: Tensor) -> Tensor:
    """(B,) bool: every kept target of the row reproduced."""
    return ((produced == targets) | (targets == IGNORE)).all(dim=1)


class LitGPT(L.LightningModule):
    """A GPT language model with AdamW and a warm-up + cosine schedule.

    Args:
        model: GPT config with `_target_`; vocab_size comes from the tokenizer (a config value,
            as tasks set, must agree with it).
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
                raise ConfigError(f"optim.{key} must be positive, got {optim[key]}")
        self.nonfinite_skips = 0
        self.first_nonfinite_step: Tensor | None = None  # device-side record (accelerators)
        self.tokenizer = instantiate(tokenizer)
        vocab_size = self.tokenizer.vocab_size
        if model.get("vocab_size") not in (None, vocab_size):
            raise ConfigError(
                f"model.vocab_size={model['vocab_size']} but the tokenizer has {vocab_size} "
                "tokens: drop the override (the model follows the data config)"
            )
        self.model: GPT = instantiate(
            model, vocab_size=vocab_size, attention=instantiate(attention)
        )
        # Characters each token decodes to, for bits per character (not saved: derived).
        chars = [len(self.tokenizer.decode([i])) for i in range(vocab_size)]
        self.register_buffer("token_chars", torch.tensor(chars), persistent=False)
        for stage in ("val", "test", "test_long"):
            setattr(self, f"{stage}_loss", MeanMetric())
            setattr(self, f"{stage}_ppl", Perplexity(ignore_index=IGNORE))
            setattr(self, f"{stage}_bpc", BitsPerCharacter())
            setattr(
                self,
                f"{stage}_answer_token_acc",
                MulticlassAccuracy(vocab_size, average="micro", ignore_index=IGNORE),
            )
            setattr(self, f"{stage}_exact_match", MeanMetric())
        self.answer_metrics = False  # set in setup() from the datamodule
        self.test_splits: tuple[str, ...] = ("test",)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        self.answer_metrics = bool(getattr(datamodule, "answer_metrics", False))
        self.test_splits = tuple(getattr(datamodule, "test_splits", ("test",)))

    def forward(self, idx: Tensor, targets: Tensor | None = None):
        return self.model(idx, targets)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        x, y = batch
        loss = self.model(x, y).loss
        if self._check_loss_every_step():
            if not torch.isfinite(loss):
                return self._skip_or_stop(loss)  # None skips backward and optimizer step
        else:
            self._record_nonfinite(loss)
        # Only on the steps the loggers write (Lightning's own rule): self.log costs ~1% of a
        # CPU step. Not on the progress bar: RichProgressBar reads its metrics every step,
        # which would force a device sync per step (25% of GPU throughput on the baby GPT).
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train/loss", loss)
        return loss

    def _check_loss_every_step(self) -> bool:
        """On CPU a per-step check is free. On an accelerator it would sync every step, so
        only `skip` (which must decide before the update) pays for it; `stop` records the
        first bad step on the device and checks it at log intervals and before any
        checkpoint is written, so weights touched by a bad update are never saved."""
        skip = self.hparams.optim.get("on_nonfinite_loss", "stop") == "skip"
        return skip or self.device.type == "cpu"

    def _record_nonfinite(self, loss: Tensor) -> None:
        if self.first_nonfinite_step is None:
            self.first_nonfinite_step = torch.full((), -1, device=loss.device)
        bad = ~torch.isfinite(loss.detach()) & (self.first_nonfinite_step < 0)
        self.first_nonfinite_step = torch.where(bad, self.global_step, self.first_nonfinite_step)
        if self.global_step % self.trainer.log_every_n_steps == 0:
            self.raise_if_nonfinite()

    def raise_if_nonfinite(self) -> None:
        """Stop if a non-finite loss was recorded (one device sync)."""
        if self.first_nonfinite_step is not None and int(self.first_nonfinite_step) >= 0:
            step = int(self.first_nonfinite_step)
            self.nonfinite_skips += 1
            self._stop(
                f"training loss became non-finite at step {step}; weights updated since "
                "then are discarded. "
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.raise_if_nonfinite()

    def _skip_or_stop(self, loss: Tensor) -> None:
        """`optim.on_nonfinite_loss`: `stop` at once, or `skip` the batch up to
        `optim.max_nonfinite_skips` times; stopping names the step and the last checkpoint."""
        cfg = self.hparams.optim
        self.nonfinite_skips += 1
        if cfg.get("on_nonfinite_loss", "stop") == "skip" and self.nonfinite_skips <= cfg.get(
            "max_nonfinite_skips", 0
        ):
            log.warning(
                "non-finite loss %s at step %d: batch skipped", loss.item(), self.global_step
            )
            return None
        self._stop(
            f"training loss is {loss.item()} at step {self.global_step}; "
            "stopped before the bad update. "
        )

    def _stop(self, what: str) -> None:
        saved = [
            Path(path)
            for callback in self.trainer.checkpoint_callbacks
            for path in (getattr(callback, "last_model_path", ""), callback.best_model_path)
            if path and Path(path).is_file()
        ]
        last_good = max(saved, key=lambda p: p.stat().st_mtime, default=None)
        raise NonFiniteLossError(
            what
            + f"({self.nonfinite_skips} non-finite so far) "
            + (
                f"Last good checkpoint: {last_good} (resume with ckpt_path={last_good}). "
                if last_good
                else "No checkpoint was written yet. "
            )
            + "Lower optim.lr, check the data, or set optim.on_nonfinite_loss=skip."
        )

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        x, y = batch
        out = self.model(x, y)
        m = {name: getattr(self, f"{stage}_{name}") for name in METRICS}
        kept = y != IGNORE
        num_targets = kept.sum()
        m["loss"].update(out.loss, weight=num_targets)
        m["ppl"].update(out.logits.float(), y)
        m["bpc"].update(out.loss * num_targets, self.token_chars[y[kept]].sum())
        log = dict(add_dataloader_idx=False)  # test splits are told apart by their names
        self.log(f"{stage}/loss", m["loss"], prog_bar=True, **log)
        self.log(f"{stage}/ppl", m["ppl"], **log)
        self.log(f"{stage}/bpc", m["bpc"], **log)
        if self.answer_metrics:
            m["answer_token_acc"].update(out.logits.argmax(-1), y)
            m["exact_match"].update(exact_matches(greedy_answers(self.model, x, y), y).float())
            self.log(f"{stage}/answer_token_acc", m["answer_token_acc"], **log)
            self.log(f"{stage}/exact_match", m["exact_match"], prog_bar=True, **log)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(
        self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._evaluate(batch, self.test_splits[dataloader_idx])

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
    """Rebuild a trained LitGPT (model and tokenizer) from a checkpoint file alone, reading it
    safely (see attn_lightning/checkpoint.py) and in eval mode."""
    checkpoint = read_checkpoint(path, map_location)
    module = LitGPT(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    return module.to(map_location).eval()
