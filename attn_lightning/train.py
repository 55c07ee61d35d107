"""`python -m attn_lightning`: compose the config, instantiate the pieces, fit, then test."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from attn_lightning.checkpoint import (
    check_same_model,
    check_weights_fit,
    config_targets,
    trust_in_run,
)
from attn_lightning.config import print_config
from attn_lightning.csv_logger import ResumableCSVLogger
from attn_lightning.ddp_multirun import ddp_job_scope
from attn_lightning.entry_point import hydra_entry_point
from attn_lightning.errors import ConfigError
from attn_lightning.lit_module import LitGPT
from attn_lightning.record_guard import keep_record_if_refused
from attn_lightning.resume import resume_point
from attn_lightning.run_record import record_metrics, record_training
from attn_lightning.schema import TrainConfig
from attn_lightning.training.metrics import LM_METRICS, METRICS
from attn_lightning.validate import check_config

log = logging.getLogger(__name__)


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
    logs again: its curves match metrics.csv's (csv_logger.py), where those rows are replaced."""
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


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in metrics.items()}


def own_targets(cfg: DictConfig) -> tuple[str, ...]:
    """The `_target_`s outside attn_lightning.* that this run's model, attention (hybrid layers
    included) and optimizer configs name, a user's own attention or optimizer class: its
    checkpoints may name them."""
    groups = ("model", "attention", "layer_attention", "optim")
    return config_targets(*(plain(cfg[group]) for group in groups if cfg.get(group)))


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and test) one run; returns the final metrics of both (val/loss is the objective of
    hyperparameter sweepers)."""
    print_config(cfg)
    with keep_record_if_refused():  # a refused in-place resume leaves the run dir as it was
        check_config(cfg)
        callbacks = build_callbacks(cfg)
        resume = resume_point(cfg, callbacks, own_targets(cfg))  # a bad checkpoint fails here
        L.seed_everything(cfg.seed, workers=True)
        torch.set_float32_matmul_precision(str(cfg.matmul_precision))
        datamodule = instantiate(plain(cfg.data))
        check_monitored_metrics(cfg, datamodule)
        module = build_module(cfg, datamodule.tokenizer.state_dict())
        if resume.path is not None:  # before anything is written: another model is refused
            check_same_model(resume.hyper_parameters, dict(module.hparams), resume.path)
            check_weights_fit(module, resume.shapes, resume.path)
        trainer = build_trainer(cfg, callbacks, None if resume.path is None else resume.step)
    trust_in_run(trainer, own_targets(cfg))  # test(ckpt_path="best") reloads this run's files
    with ddp_job_scope():
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume.path, weights_only=True)
        metrics = scalars(trainer.callback_metrics)  # trainer.test() starts them afresh
        record_training(trainer, module, metrics)  # the run record, whatever callbacks run
        if cfg.test:
            checkpoint = trainer.checkpoint_callback
            best = "best" if checkpoint is not None and checkpoint.best_model_path else None
            trainer.test(module, datamodule=datamodule, ckpt_path=best)
            record_metrics(trainer, metrics | scalars(trainer.callback_metrics))
    return metrics | scalars(trainer.callback_metrics)


@hydra_entry_point("train", schema=TrainConfig)
def main(cfg: DictConfig) -> float | None:
    return train(cfg).get("val/loss")  # the objective of hyperparameter sweepers


if __name__ == "__main__":
    main()
