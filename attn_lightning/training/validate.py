"""Checks of a composed config that need more than one config group, or the machine; they run
before any heavy work (download, model, trainer).

Validation has one layer per rule: the schema (config/schema.py) refuses wrong types and unknown
option values while Hydra composes; each constructor checks its own arguments (GPT its sizes,
the attention base its heads, a variant its hyperparameters, a datamodule its sizes, LitGPT its
optimiser settings); what is left is here: relations between groups (model vs data, the
schedule vs the trainer) and the environment (GPUs, launchers). Each failure is a ConfigError
whose message names the key and says what to change.
"""

from __future__ import annotations

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from attn_lightning.attention.registry import check_option_types, variant_names
from attn_lightning.errors import ConfigError
from attn_lightning.training.loggers import check_logger_packages


def check_config(cfg: DictConfig) -> None:
    model, data, trainer = cfg.model, cfg.data, cfg.trainer
    if model.block_size < data.block_size:
        raise ConfigError(
            f"model.block_size={model.block_size} is shorter than the data's sequences "
            f"(data.block_size={data.block_size}): drop the model.block_size override (the model "
            "follows data.block_size) or set data.block_size"
        )
    if not trainer.max_steps > 0:  # Lightning's -1 (no limit) leaves the schedule no end
        raise ConfigError(
            f"trainer.max_steps must be positive, got {trainer.max_steps} "
            "(schedule.decay_steps follows it)"
        )
    _check_attention(cfg)
    _check_trainer_values(cfg)
    _check_devices(trainer)
    _check_launcher(trainer)
    check_logger_packages(cfg.logger)


def _check_attention(cfg: DictConfig) -> None:
    """The chosen variant's hyperparameters have its YAML's types (attention/registry.py)."""
    if not HydraConfig.initialized():
        return
    choice = HydraConfig.get().runtime.choices.get("attention")
    if choice in variant_names():
        check_option_types(choice, cfg.attention)


def _check_trainer_values(cfg: DictConfig) -> None:
    """Values Lightning or numpy accept silently or refuse with a traceback."""
    if not 0 <= cfg.seed < 2**32:
        raise ConfigError(f"seed must be in [0, 2**32), got {cfg.seed}")
    clip = cfg.trainer.get("gradient_clip_val")
    if clip is not None and not clip >= 0:
        raise ConfigError(f"trainer.gradient_clip_val must be >= 0 or null, got {clip}")
    accumulate = cfg.trainer.get("accumulate_grad_batches", 1)
    if not (isinstance(accumulate, int) and accumulate >= 1):
        raise ConfigError(f"trainer.accumulate_grad_batches must be >= 1, got {accumulate}")


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
