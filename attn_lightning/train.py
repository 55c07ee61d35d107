"""`python -m attn_lightning`: compose the config, instantiate the pieces, fit, then test."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from attn_lightning.checkpoint import config_targets, read_checkpoint, trust_in_run
from attn_lightning.config import CONFIG_DIR, print_config
from attn_lightning.csv_logger import ResumableCSVLogger
from attn_lightning.ddp_multirun import ddp_job_scope
from attn_lightning.errors import exit_on_user_error
from attn_lightning.lit_module import LitGPT
from attn_lightning.run_record import record_metrics, record_training
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


def build_trainer(cfg: DictConfig) -> L.Trainer:
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    loggers = [instantiate(c) for c in cfg.logger.values() if c is not None]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in metrics.items()}


def own_targets(cfg: DictConfig) -> tuple[str, ...]:
    """The `_target_`s outside attn_lightning.* that this run's model, attention (hybrid layers
    included) and optimizer configs name, a user's own attention or optimizer class: its
    checkpoints may name them."""
    groups = ("model", "attention", "layer_attention", "optim")
    return config_targets(*(plain(cfg[group]) for group in groups if cfg.get(group)))


def checkpoint_to_resume(cfg: DictConfig) -> tuple[str | None, int]:
    """`ckpt_path`, or with `resume=auto` this run dir's last.ckpt when there is one, and the
    step it continues from. The file is checked now, so a bad checkpoint fails before any
    training starts."""
    path = cfg.ckpt_path
    if path is None and cfg.resume == "auto":
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        path = str(last) if last.is_file() else None
        log.info("resume=auto: %s", f"resuming from {last}" if path else f"no {last}, fresh start")
    if path is None:
        return None, 0
    return path, int(read_checkpoint(path, trusted=own_targets(cfg)).get("global_step", 0))


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and test) one run; returns the final metrics of both (val/loss is the objective of
    hyperparameter sweepers)."""
    print_config(cfg)
    check_config(cfg)
    ckpt_path, resume_step = checkpoint_to_resume(cfg)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(str(cfg.matmul_precision))
    datamodule = instantiate(plain(cfg.data))
    module = build_module(cfg, datamodule.tokenizer.state_dict())
    trainer = build_trainer(cfg)
    trust_in_run(trainer, own_targets(cfg))  # test(ckpt_path="best") reloads this run's files
    for logger in trainer.loggers:
        if isinstance(logger, ResumableCSVLogger):
            logger.resume_at(resume_step)  # keep the rows logged before the checkpoint
    with ddp_job_scope():
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics = scalars(trainer.callback_metrics)  # trainer.test() starts them afresh
        record_training(trainer, module, metrics)  # the run record, whatever callbacks run
        if cfg.test:
            checkpoint = trainer.checkpoint_callback
            best = "best" if checkpoint is not None and checkpoint.best_model_path else None
            trainer.test(module, datamodule=datamodule, ckpt_path=best)
            record_metrics(trainer, metrics | scalars(trainer.callback_metrics))
    return metrics | scalars(trainer.callback_metrics)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    return train(cfg).get("val/loss")  # the objective of hyperparameter sweepers


if __name__ == "__main__":
    main()
