"""The optimizer (any torch optimizer, a `_partial_` config: conf/optim/*), nanoGPT's parameter
groups and its warm-up + cosine learning-rate schedule (conf/train.yaml's `schedule`).

The optimizer node is the optimizer's own keyword arguments (`_target_: torch.optim.AdamW`,
`lr`, `betas`, ...); it is instantiated here with the parameter groups, so another optimizer is
a YAML file naming its class and arguments. Its arguments are checked against the class before
fit (`check_optim`): a misspelt or foreign key fails in one line naming it, not in
configure_optimizers after the model and trainer are built.

torch's built-in schedulers chain a linear warm-up and a cosine decay only through
SequentialLR, whose warm-up starts from a factor rather than nanoGPT's (step + 1) / (warmup + 1)
and whose cosine ends at `eta_min` on a different step; the closed form below is nanoGPT's
recipe, which the presets follow.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from torch import nn

from attn_lightning.errors import ConfigError


def optimizer_arguments(optim: Mapping[str, Any]) -> dict[str, Any]:
    """The optimizer's keyword arguments: the config minus Hydra's `_underscored_` keys."""
    return {k: v for k, v in optim.items() if not (k.startswith("_") and k.endswith("_"))}


def check_optim(optim: Mapping[str, Any], schedule: Mapping[str, Any] | None) -> None:
    """Before fit: the optimizer class exists and takes every key given (its signature), it
    accepts their values (built once on a dummy parameter: torch checks its own ranges), the
    peak rate is positive and the schedule's floor is positive and at most the peak."""
    target = optim.get("_target_")
    try:
        optimizer_class = get_class(str(target))
    except (ImportError, ValueError):
        raise ConfigError(
            f"optim._target_={target!r} is not an importable class: name a torch optimizer "
            "(torch.optim.AdamW) or pick an option of conf/optim/"
        ) from None
    arguments = optimizer_arguments(optim)
    signature = inspect.signature(optimizer_class)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    accepted = [name for name in signature.parameters if name != "params"]
    for key in arguments:
        if key not in accepted and not takes_any:
            raise ConfigError(
                f"optim.{key} is not an argument of {target} (it takes {', '.join(accepted)}): "
                f"drop it (~optim.{key}) or pick the optimizer that has it"
            )
    lr = arguments.get("lr")
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
        raise ConfigError(f"optim.lr must be positive, got {lr!r}")
    try:
        build_optimizer([nn.Parameter(torch.zeros(1))], optim)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"optim: {target} refuses its arguments {arguments}: {error}") from None
    if schedule is None:
        return
    peak = optimizer_rate(optim)
    if not schedule["min_lr"] > 0:
        raise ConfigError(f"schedule.min_lr must be positive, got {schedule['min_lr']}")
    if schedule["min_lr"] > peak:
        raise ConfigError(
            f"schedule.min_lr={schedule['min_lr']} exceeds optim.lr={peak}: the schedule decays "
            "from optim.lr down to schedule.min_lr"
        )


def build_optimizer(params: Any, optim: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The configured optimizer over `params` (tensors or parameter groups); plain containers
    in its arguments (a checkpoint's optimizer state holds no OmegaConf nodes)."""
    return instantiate(dict(optim), _convert_="all")(params)


def optimizer_rate(optim: Mapping[str, Any]) -> float:
    """The configured peak learning rate (the class's default when the config gives none)."""
    if "lr" in optim:
        return float(optim["lr"])
    default = inspect.signature(get_class(optim["_target_"])).parameters["lr"].default
    return float(default)


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


def parameter_groups(model: nn.Module) -> list[dict[str, Any]]:
    """nanoGPT's groups: weight decay (the optimizer's `weight_decay`, from the config) on
    matrices and embeddings, none on biases and norm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"name": "decay", "params": [p for p in params if p.dim() >= 2]},
        {"name": "no_decay", "params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def optimizer_with_schedule(
    model: nn.Module, optim: Mapping[str, Any], schedule: Mapping[str, Any] | None
) -> dict[str, Any]:
    """`configure_optimizers`' answer: the configured optimizer over nanoGPT's groups, and the
    per-step warm-up + cosine schedule logged as `train/lr` (no schedule: a constant rate)."""
    optimizer = build_optimizer(parameter_groups(model), optim)
    if schedule is None:
        return {"optimizer": optimizer}
    peak = optimizer_rate(optim)
    steps = (peak, schedule["min_lr"], schedule["warmup_steps"], schedule["decay_steps"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, *steps) / peak
    )
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"},
    }
