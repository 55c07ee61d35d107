"""`python -m attn_lightning`: compose the config, instantiate the pieces, fit, then test."""

from __future__ import annotations

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from attn_lightning.config import CONFIG_DIR, print_config
from attn_lightning.ddp_multirun import ddp_job_scope
from attn_lightning.lit_module import LitGPT


def plain(cfg: DictConfig) -> dict:
    """A resolved config node as plain containers (what checkpoints and hparams store)."""
    return OmegaConf.to_container(cfg, resolve=True)


def build_trainer(cfg: DictConfig) -> L.Trainer:
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    loggers = [instantiate(c) for c in cfg.logger.values() if c is not None]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and test) one run; returns the final logged metrics."""
    print_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    datamodule = instantiate(cfg.data)
    module = LitGPT(
        model=plain(cfg.model),
        attention=plain(cfg.attention),
        optim=plain(cfg.optim),
        tokenizer=datamodule.tokenizer.state_dict(),
    )
    trainer = build_trainer(cfg)
    with ddp_job_scope():
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        if cfg.test:
            checkpoint = trainer.checkpoint_callback
            best = "best" if checkpoint is not None and checkpoint.best_model_path else None
            trainer.test(module, datamodule=datamodule, ckpt_path=best)
    return {name: float(value) for name, value in trainer.callback_metrics.items()}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get("val/loss")  # the objective of hyperparameter sweepers


if __name__ == "__main__":
    main()
