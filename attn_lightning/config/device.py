"""The `device` key of the inference commands (sample, analyze, eval) as a torch device."""

from __future__ import annotations

import torch

from attn_lightning.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto`: a GPU when there is one; anything else as torch names it, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device: use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but this machine has no CUDA GPU: use device=cpu")
    return device
