"""Batches of (input, target) windows cut from one long token stream.

Training batches are step-indexed (see step_batches.py); evaluation windows are fixed once and
for all.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from attn_lightning.data.step_batches import StepBatches
from attn_lightning.errors import ConfigError


def windows_at(tokens: Tensor, starts: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """Inputs tokens[s : s+T] and targets tokens[s+1 : s+T+1] for each start s -> (N, T) each."""
    idx = starts[:, None] + torch.arange(block_size + 1)  # (N, T+1)
    chunk = tokens[idx]
    return chunk[:, :-1], chunk[:, 1:]


class RandomWindowBatches(StepBatches):
    """Each batch: `batch_size` windows at random offsets of the token stream."""

    def __init__(self, tokens: Tensor, block_size: int, batch_size: int, **position: int) -> None:
        super().__init__(**position)
        if len(tokens) <= block_size + 1:
            raise ConfigError(
                f"the training split has {len(tokens)} tokens, too few for block_size "
                f"{block_size}: lower data.block_size"
            )
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size

    def batch(self, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        starts = rng.integers(0, len(self.tokens) - self.block_size - 1, size=self.batch_size)
        return windows_at(self.tokens, torch.from_numpy(starts), self.block_size)


def evenly_spaced_starts(num_tokens: int, block_size: int, count: int | None) -> Tensor:
    """Start offsets of `count` windows spread evenly over the stream (all non-overlapping
    windows when `count` is None or larger than what fits)."""
    last = num_tokens - block_size - 1
    if last < 0:
        raise ConfigError(
            f"the evaluation split has {num_tokens} tokens, too few for block_size {block_size}: "
            "lower data.block_size or raise data.val_fraction"
        )
    n_disjoint = last // block_size + 1
    if count is None or count >= n_disjoint:
        return torch.arange(n_disjoint) * block_size
    return torch.linspace(0, last, count).long()


class FixedWindows(Dataset):
    """A fixed list of evaluation windows; item i is one (input, target) pair."""

    def __init__(self, tokens: Tensor, block_size: int, count: int | None) -> None:
        starts = evenly_spaced_starts(len(tokens), block_size, count)
        self.inputs, self.targets = windows_at(tokens, starts, block_size)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.inputs[i], self.targets[i]
