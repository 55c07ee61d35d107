"""Training batches indexed by step, and the loaders every DataModule uses.

Item i of a `StepBatches` is a whole batch drawn with a generator seeded by
(seed, rank, first_batch + i): a run is reproducible, each DDP rank sees different data, and a
resumed run continues the exact sequence of an uninterrupted one. Two details make resuming
exact, and both live here so no DataModule can get them wrong:
- the length stays `num_batches`: Lightning counts a resumed epoch's batches from the restored
  position, so a dataset shortened by the offset would end the epoch early and replay data;
- loaders get a private generator: a DataLoader iterator otherwise draws a seed from the global
  RNG, shifting the dropout masks of a resumed run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from attn_lightning.errors import ConfigError


class StepBatches(Dataset, ABC):
    """Item i: the batch of step `first_batch + i`. Use with `step_loader`."""

    def __init__(self, num_batches: int, seed: int, rank: int = 0, first_batch: int = 0) -> None:
        self.num_batches = num_batches
        self.seed = seed
        self.rank = rank
        self.first_batch = first_batch

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.batch(np.random.default_rng([self.seed, self.rank, self.first_batch + i]))

    @abstractmethod
    def batch(self, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        """(inputs, targets), each (batch_size, T), drawn from `rng` alone."""


def step_position(trainer: Any) -> dict[str, int]:
    """`num_batches`, `rank` and `first_batch` of the training run `trainer` is doing."""
    if trainer is None or trainer.max_steps <= 0:
        raise ConfigError("training needs trainer.max_steps > 0 (the batches are step-indexed)")
    accumulate = trainer.accumulate_grad_batches
    return {
        "num_batches": trainer.max_steps * accumulate,
        "rank": trainer.global_rank,
        "first_batch": trainer.global_step * accumulate,  # a resumed run continues its sequence
    }


def step_loader(batches: StepBatches) -> DataLoader:
    return DataLoader(batches, batch_size=None, shuffle=False, generator=torch.Generator())


def eval_loader(data: Dataset, batch_size: int, trainer: Any) -> DataLoader:
    """Fixed evaluation data, shared out across DDP ranks (every item evaluated once)."""
    rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
    shard = Subset(data, range(rank, len(data), world))
    return DataLoader(shard, batch_size=batch_size, shuffle=False, generator=torch.Generator())
