"""Batches of (input, target) windows cut from one long token stream.

Training batches are a pure function of (seed, batch index, rank): runs are reproducible,
resumable from any step, and each DDP rank sees different data. Evaluation windows are
fixed once and for all.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from attn_lightning.errors import ConfigError


def windows_at(tokens: Tensor, starts: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """Inputs tokens[s : s+T] and targets tokens[s+1 : s+T+1] for each start s -> (N, T) each."""
    idx = starts[:, None] + torch.arange(block_size + 1)  # (N, T+1)
    chunk = tokens[idx]
    return chunk[:, :-1], chunk[:, 1:]


class RandomWindowBatches(Dataset):
    """Item i is a whole batch of `batch_size` random windows drawn with a generator seeded by
    (seed, rank, first_batch + i); use with `DataLoader(batch_size=None)`.

    With gradient accumulation 1, the batch index equals the optimizer's global step.
    `first_batch` lets a resumed run continue the exact sequence it would have seen. The length
    stays `num_batches`: Lightning counts a resumed epoch's batches from the restored position,
    so a shorter dataset would end the epoch early and replay data.
    """

    def __init__(
        self,
        tokens: Tensor,
        block_size: int,
        batch_size: int,
        num_batches: int,
        seed: int,
        rank: int = 0,
        first_batch: int = 0,
    ) -> None:
        if len(tokens) <= block_size + 1:
            raise ConfigError(
                f"the training split has {len(tokens)} tokens, too few for block_size "
                f"{block_size}: lower model.block_size"
            )
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.seed = seed
        self.rank = rank
        self.first_batch = first_batch

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        rng = np.random.default_rng([self.seed, self.rank, self.first_batch + i])
        starts = rng.integers(0, len(self.tokens) - self.block_size - 1, size=self.batch_size)
        return windows_at(self.tokens, torch.from_numpy(starts), self.block_size)


def evenly_spaced_starts(num_tokens: int, block_size: int, count: int | None) -> Tensor:
    """Start offsets of `count` windows spread evenly over the stream (all non-overlapping
    windows when `count` is None or larger than what fits)."""
    last = num_tokens - block_size - 1
    if last < 0:
        raise ConfigError(
            f"the evaluation split has {num_tokens} tokens, too few for block_size {block_size}: "
            "lower model.block_size or raise data.val_fraction"
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
