"""`python -m attn_lightning`: compose the config, instantiate the pieces, fit, then test."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from attn_lightning.config import print_config
from attn_lightning.config.entry_point import hydra_entry_point
from attn_lightning.config.schema import TrainConfig
from attn_lightning.runs.checkpoint import (
    check_same_model,
    check_weights_fit,
    config_targets,
    trust_in_run,
)
from attn_lightning.runs.record import record_metrics, record_training
from attn_lightning.runs.record_guard import keep_record_if_refused
from attn_lightning.runs.resume import resume_point
from attn_lightning.training.builders import (
    build_callbacks,
    build_module,
    build_trainer,
    check_monitored_metrics,
    plain,
)
from attn_lightning.training.ddp import ddp_job_scope
from attn_lightning.training.validate import check_config

log = logging.getLogger(__name__)


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
