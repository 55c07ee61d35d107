"""The fixed probe sequences of the attention callbacks: the first validation batch's inputs."""

from __future__ import annotations

import lightning as L
from torch import Tensor


def first_validation_inputs(trainer: L.Trainer, max_sequences: int) -> Tensor | None:
    """Up to `max_sequences` input rows (N, T) of the first validation batch, on the CPU; the
    validation windows are fixed, so every call returns the same tokens. None without data."""
    loaders = trainer.val_dataloaders
    if loaders is None and trainer.datamodule is not None:
        loaders = trainer.datamodule.val_dataloader()
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    if loaders is None:
        return None
    batch = next(iter(loaders), None)
    if batch is None:
        return None
    inputs = batch[0] if isinstance(batch, (list, tuple)) else batch
    return inputs[:max_sequences].detach().cpu()


class EveryNValidations:
    """Counts validations (sanity checks excluded); true on the 1st, (n+1)th, (2n+1)th ..."""

    def __init__(self, every_n: int) -> None:
        if every_n < 0:
            raise ValueError(f"every_n_validations must be >= 0 (0 = never), got {every_n}")
        self.every_n = every_n
        self.count = 0

    def __call__(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking or self.every_n == 0:
            return False
        self.count += 1
        return (self.count - 1) % self.every_n == 0
