"""The LightningModule: builds the GPT from plain config dicts, optimises and logs it.

Everything needed to rebuild the model and its tokenizer is in `hparams` (plain containers),
so a checkpoint alone loads (`attn_lightning.runs.checkpoint.load_checkpoint`). What this module
delegates has its own home in `attn_lightning/training/`: the optimiser and schedule
(optim.py), the metrics of each evaluation stage (metrics.py), greedy task answers
(answers.py) and the non-finite-loss policy (nonfinite.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch import Tensor, nn

from attn_lightning.data.interface import LanguageModelData
from attn_lightning.errors import ConfigError
from attn_lightning.model.gpt import GPT
from attn_lightning.training.answers import exact_matches, greedy_answers
from attn_lightning.training.metrics import StageMetrics
from attn_lightning.training.nonfinite import NonFiniteLossGuard
from attn_lightning.training.optim import check_optim, optimizer_with_schedule

EVAL_STAGES = ("val", "test", "test_long")


class LitGPT(L.LightningModule):
    """A GPT language model with a torch optimizer (AdamW by default) and a warm-up + cosine
    schedule.

    Args:
        model: GPT config with `_target_`; vocab_size comes from the tokenizer (a config value,
            if given, must agree with it).
        attention: attention factory config (`_target_`, `_partial_: true`, hyperparameters).
        optim: the optimizer's `_partial_` config (`_target_: torch.optim.AdamW`, lr, betas,
            weight_decay, ...: conf/optim/).
        tokenizer: the tokenizer's state dict (`_target_` plus its vocabulary).
        layer_attention: {layer index: attention config} for the layers of a hybrid stack that
            do not use `attention` (None or empty: every layer does).
        schedule: min_lr, warmup_steps, decay_steps of the warm-up + cosine schedule whose peak
            is optim.lr (None: a constant rate).
        on_nonfinite_loss, max_nonfinite_skips: what a NaN/inf loss does
            (training/nonfinite.py).
    """

    def __init__(
        self,
        model: dict[str, Any],
        attention: dict[str, Any],
        optim: dict[str, Any],
        tokenizer: dict[str, Any],
        layer_attention: dict[str, Any] | None = None,
        schedule: dict[str, Any] | None = None,
        on_nonfinite_loss: str = "stop",
        max_nonfinite_skips: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.optimizer_config = dict(optim)
        self.schedule = schedule
        check_optim(self.optimizer_config, self.schedule)
        self.nonfinite = NonFiniteLossGuard(
            on_nonfinite_loss, max_nonfinite_skips, self._last_checkpoint
        )
        self.tokenizer = instantiate(tokenizer)
        vocab_size = self.tokenizer.vocab_size
        if model.get("vocab_size") not in (None, vocab_size):
            raise ConfigError(
                f"model.vocab_size={model['vocab_size']} but the tokenizer has {vocab_size} "
                "tokens: drop the override (the model follows the data config)"
            )
        hybrid = {}  # only when given: a plain stack is GPT's own default
        if layer_attention:
            layers = {key: instantiate(cfg) for key, cfg in layer_attention.items()}
            hybrid["layer_attention"] = layers
        self.model: GPT = instantiate(
            model, vocab_size=vocab_size, attention=instantiate(attention), **hybrid
        )
        # Characters each token decodes to, for bits per character (not saved: derived).
        chars = [len(self.tokenizer.decode([i])) for i in range(vocab_size)]
        self.register_buffer("token_chars", torch.tensor(chars), persistent=False)
        self.stage_metrics = nn.ModuleDict({s: StageMetrics(vocab_size) for s in EVAL_STAGES})
        self.answer_metrics = False  # set in setup() from the datamodule
        self.teacher_forced_answers = False
        self.test_splits: tuple[str, ...] = LanguageModelData.test_splits
        self.compiled_forward: Callable[..., Any] | None = None  # compile_training_forward()

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if isinstance(datamodule, LanguageModelData):
            self.answer_metrics = datamodule.answer_metrics
            self.teacher_forced_answers = datamodule.teacher_forced_answers
            self.test_splits = datamodule.test_splits
            for split in self.test_splits:  # splits named by the data config (MQAR settings)
                if split not in self.stage_metrics:
                    metrics = StageMetrics(self.tokenizer.vocab_size).to(self.device)
                    self.stage_metrics[split] = metrics

    def forward(self, idx: Tensor, targets: Tensor | None = None):
        return self.model(idx, targets)

    def compile_training_forward(self, **options: Any) -> None:
        """`compile=true`: training steps run the GPT through `torch.compile`. Only training:
        evaluation batches and decoding (one more token per call) have other shapes, each of
        which would compile again. The compiled function is not a submodule, so the weights
        keep their names (no `_orig_mod.` prefix in checkpoints)."""
        self.compiled_forward = torch.compile(self.model.forward, **options)

    def training_forward(self, idx: Tensor, targets: Tensor):
        """The GPT's forward of a training step: compiled after compile_training_forward()."""
        return (self.compiled_forward or self.model)(idx, targets)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        x, y = batch
        loss = self.training_forward(x, y).loss
        log_step = (self.global_step + 1) % self.trainer.log_every_n_steps == 0
        check_now = self.global_step % self.trainer.log_every_n_steps == 0
        if self.nonfinite.skip_batch(loss, self.global_step, check_now):
            return None  # Lightning skips backward and the optimizer step
        # Only on the steps the loggers write (Lightning's own rule): self.log has a cost every
        # step. Not on the progress bar: Lightning's own RichProgressBar (which a user may
        # configure instead of callbacks/progress_bar.py) reads its metrics every step, a device
        # sync per step.
        if log_step:
            self.log("train/loss", loss)
        return loss

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite.raise_if_recorded()  # never save weights a bad update touched

    def _last_checkpoint(self) -> Path | None:
        """The newest checkpoint file written so far (named when training stops)."""
        saved = [
            Path(path)
            for callback in self.trainer.checkpoint_callbacks
            for path in (getattr(callback, "last_model_path", ""), callback.best_model_path)
            if path and Path(path).is_file()
        ]
        return max(saved, key=lambda p: p.stat().st_mtime, default=None)

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        x, y = batch
        out = self.model(x, y)
        metrics = self.stage_metrics[stage]
        metrics.update_language_model(out.loss, out.logits, y, self.token_chars)
        if self.answer_metrics:
            if self.teacher_forced_answers:
                produced = out.logits.argmax(-1)
            else:
                produced = greedy_answers(self.model, x, y)
            exact = exact_matches(produced, y)
            metrics.update_answers(out.logits, y, exact)
        shown = ("loss", "exact_match")  # on the progress bar
        for name, metric in metrics.named(self.answer_metrics).items():
            # test splits are told apart by their names, not by dataloader index
            self.log(f"{stage}/{name}", metric, prog_bar=name in shown, add_dataloader_idx=False)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(
        self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._evaluate(batch, self.test_splits[dataloader_idx])

    def configure_optimizers(self) -> dict[str, Any]:
        return optimizer_with_schedule(self.model, self.optimizer_config, self.schedule)
