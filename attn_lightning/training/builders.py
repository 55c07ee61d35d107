"""The pieces of a training run built from a composed config: the LightningModule, its
callbacks, loggers and Trainer. `train.py` and the benchmarks build runs the same way here."""

from __future__ import annotations

from typing import Any

import lightning as L
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from attn_lightning.errors import ConfigError
from attn_lightning.training.csv_logger import ResumableCSVLogger
from attn_lightning.training.lit_module import LitGPT
from attn_lightning.training.metrics import LM_METRICS, METRICS


def plain(cfg: DictConfig) -> dict:
    """A resolved config node as plain containers and strings (schema enums included): what
    constructors, checkpoints and hparams get."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def build_module(cfg: DictConfig, tokenizer: dict[str, Any]) -> LitGPT:
    """The LightningModule of a composed config; `compile=true` runs its GPT's training
    steps through torch.compile (LitGPT.compile_training_forward)."""
    module = LitGPT(
        model=plain(cfg.model),
        attention=plain(cfg.attention),
        optim=plain(cfg.optim),
        tokenizer=tokenizer,
        layer_attention=plain(cfg.layer_attention) or None,
        schedule=None if cfg.schedule is None else plain(cfg.schedule),
        on_nonfinite_loss=str(cfg.on_nonfinite_loss),
        max_nonfinite_skips=cfg.max_nonfinite_skips,
    )
    if cfg.compile:
        module.compile_training_forward()
    return module


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    return [instantiate(c) for c in cfg.callbacks.values() if c is not None]


def check_monitored_metrics(cfg: DictConfig, datamodule: Any) -> None:
    """A callback that monitors a validation metric this data never logs (EarlyStopping on
    `val/exact_match` over text) fails at the first validation with Lightning's traceback:
    refuse it before fit, naming the key and the metrics there are."""
    answers = getattr(datamodule, "answer_metrics", False)
    logged = [f"val/{name}" for name in (METRICS if answers else LM_METRICS)]
    for name, callback in cfg.callbacks.items():
        monitor = callback.get("monitor") if callback is not None else None
        if isinstance(monitor, str) and monitor.startswith("val/") and monitor not in logged:
            raise ConfigError(
                f"callbacks.{name}.monitor={monitor} is never logged with this data: choose "
                f"one of {', '.join(logged)}"
            )


def build_logger(cfg: DictConfig, resume_step: int | None) -> Logger:
    """A logger of the config. Resuming from `resume_step` (None: not resuming), TensorBoard
    hides its events from that step on (SummaryWriter's `purge_step`), which the resumed run
    logs again: its curves match metrics.csv's (training/csv_logger.py), where those rows are
    replaced."""
    if resume_step is not None and issubclass(get_class(cfg._target_), TensorBoardLogger):
        return instantiate(cfg, purge_step=resume_step)
    logger = instantiate(cfg)
    if isinstance(logger, ResumableCSVLogger):
        logger.resume_at(resume_step or 0)  # keep the rows logged before the checkpoint
    return logger


def build_trainer(
    cfg: DictConfig, callbacks: list[L.Callback] | None = None, resume_step: int | None = None
) -> L.Trainer:
    """The Trainer of a config, with its callbacks (built here unless given) and loggers (set
    to continue their history at `resume_step` when resuming)."""
    callbacks = build_callbacks(cfg) if callbacks is None else callbacks
    loggers = [build_logger(c, resume_step) for c in cfg.logger.values() if c is not None]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
