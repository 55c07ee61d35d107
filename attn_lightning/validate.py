"""Checks of a composed config that run before any heavy work (download, model, trainer).

Each failure is a ConfigError whose message names the key and says what to change. Checks that
need a built object (a variant's own hyperparameters, the data length) live in the
constructors, which raise ConfigError too.
"""

from __future__ import annotations

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from attn_lightning.errors import ConfigError


def check_config(cfg: DictConfig) -> None:
    model, optim, trainer = cfg.model, cfg.optim, cfg.trainer
    for key, value in (
        ("model.n_layer", model.n_layer),
        ("model.n_head", model.n_head),
        ("model.n_embd", model.n_embd),
        ("model.block_size", model.block_size),
        ("data.batch_size", cfg.data.batch_size),
        ("trainer.max_steps", trainer.max_steps),
        ("optim.lr", optim.lr),
    ):
        if not value > 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    if not 0 <= optim.min_lr <= optim.lr:
        raise ConfigError(f"optim.min_lr must be in [0, optim.lr={optim.lr}], got {optim.min_lr}")
    if model.n_embd % model.n_head:
        raise ConfigError(
            f"model.n_embd={model.n_embd} is not divisible by model.n_head={model.n_head}: "
            f"choose n_embd as a multiple of n_head (e.g. {model.n_head * 32})"
        )
    n_kv_head = cfg.attention.get("n_kv_head")
    if n_kv_head is not None and (n_kv_head <= 0 or model.n_head % n_kv_head):
        raise ConfigError(
            f"attention.n_kv_head={n_kv_head} must be positive and divide "
            f"model.n_head={model.n_head}"
        )
    if cfg.resume not in (None, "auto"):
        raise ConfigError(f"resume must be null or auto, got {cfg.resume!r}")
    _check_devices(trainer)
    _check_launcher(trainer)


def _check_devices(trainer: DictConfig) -> None:
    """A GPU trainer on a machine without enough GPUs fails here, not deep inside Lightning."""
    if trainer.accelerator not in ("gpu", "cuda"):
        return
    wanted = trainer.devices if isinstance(trainer.devices, int) else None
    found = torch.cuda.device_count()
    if found == 0 or (wanted is not None and wanted > found):
        raise ConfigError(
            f"this trainer asks for {wanted or 'some'} GPU(s) but {found} CUDA GPU(s) were found: "
            "use trainer=ddp_cpu (2 CPU processes) or trainer=cpu, or set "
            f"trainer.devices={max(found, 1)}"
        )


def _check_launcher(trainer: DictConfig) -> None:
    """Lightning starts DDP ranks by re-running the command line; in a joblib worker that is
    the worker's own, so the ranks would never start."""
    if not HydraConfig.initialized() or trainer.get("devices", 1) in (1, "1"):
        return
    launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    if "joblib" in launcher.lower() and "ddp" in str(trainer.get("strategy", "")).lower():
        raise ConfigError(
            "DDP jobs cannot run under hydra/launcher=parallel (joblib workers cannot start "
            "DDP ranks): drop hydra/launcher=parallel to run the jobs one after another, or "
            "use hydra/launcher=slurm"
        )
