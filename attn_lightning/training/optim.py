"""AdamW with nanoGPT's parameter groups and its warm-up + cosine learning-rate schedule.

torch's built-in schedulers chain a linear warm-up and a cosine decay only through
SequentialLR, whose warm-up starts from a factor rather than nanoGPT's (step + 1) / (warmup + 1)
and whose cosine ends at `eta_min` on a different step; the closed form below is the recipe
the project's figures (and nanoGPT's) were measured with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from attn_lightning.errors import ConfigError


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


def check_optim(optim: Mapping[str, Any]) -> None:
    """The settings' own ranges: a positive peak and floor, the floor at most the peak."""
    for key in ("lr", "min_lr"):
        if not optim[key] > 0:
            raise ConfigError(f"optim.{key} must be positive, got {optim[key]}")
    if optim["min_lr"] > optim["lr"]:
        raise ConfigError(
            f"optim.min_lr={optim['min_lr']} exceeds optim.lr={optim['lr']}: the schedule decays "
            "from lr down to min_lr"
        )


def adamw_with_schedule(model: nn.Module, optim: Mapping[str, Any]) -> dict[str, Any]:
    """`configure_optimizers`' answer: AdamW with weight decay on matrices (and embeddings)
    only, as nanoGPT, and the per-step schedule logged as `train/lr`."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {
            "name": "decay",
            "params": [p for p in params if p.dim() >= 2],
            "weight_decay": optim["weight_decay"],
        },
        {"name": "no_decay", "params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]))
    schedule = (
        optim["lr"],
        optim["min_lr"],
        optim["warmup_steps"],
        optim["decay_steps"],
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, *schedule) / optim["lr"]
    )
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"},
    }
