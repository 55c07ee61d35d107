"""What a token-level synthetic task provides: its settings, and a vectorised generator of
scored examples. MQAR and its harder forms, the MAD tasks, state tracking and passkey retrieval
are each one `TokenTask`; `token_task_datamodule.TokenTaskDataModule` serves any of them.

An example is `seq_len` integer ids with a target at every position:

    inputs [n, t]  : the token read at position t
    targets[n, t]  : the id to predict after reading inputs[n, : t + 1], or IGNORE (not scored)

so the loss and the accuracies count the answers only. A setting is one point of the task's
difficulty (e.g. MQAR's length and number of key-value pairs); a datamodule trains on some
settings and tests on others, each reported under its name (`test_<name>/...`).

Which split (train, val, test) an example belongs to is a hash of its `split_keys`, the tokens
that make it the example it is (MQAR: the key-value context). Two examples with the same keys
share a split, so no evaluation example is ever trained on, whatever the sampling.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor

from attn_lightning.data.tasks import split_of
from attn_lightning.errors import ConfigError


class Setting(Protocol):
    """One point of a task's difficulty: a frozen dataclass with these two properties."""

    @property
    def name(self) -> str:
        """Short and unique within the task, e.g. `L64_kv4`: metric names use it."""

    @property
    def seq_len(self) -> int:
        """Tokens per example (inputs and targets alike)."""


def split_of_keys(keys: np.ndarray, eval_fraction: float) -> str:
    """train / val / test of an example, from its split keys alone (tasks.split_of)."""
    return split_of(" ".join(map(str, keys.tolist())), eval_fraction)


def int_fields(entry: Mapping[str, Any], key: str, names: Sequence[str]) -> list[int]:
    """The integers `names` of a setting's config entry, in that order: a one-line ConfigError
    naming `key` unless the entry has exactly these keys, each an integer."""
    if not isinstance(entry, Mapping) or set(entry) != set(names):
        raise ConfigError(f"{key} = {entry}: give exactly {', '.join(names)}")
    values = [entry[name] for name in names]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{key} = {dict(entry)}: {', '.join(names)} must be integers")
    return values


@dataclass(frozen=True)
class TokenExamples:
    """`count` examples of one setting (see the module docstring)."""

    inputs: np.ndarray  # (N, seq_len) int64
    targets: np.ndarray  # (N, seq_len) int64, IGNORE where not scored
    split_keys: np.ndarray  # (N, K) int64: the tokens deciding each example's split
    setting: Any  # a Setting

    def splits(self, eval_fraction: float) -> list[str]:
        return [split_of_keys(row, eval_fraction) for row in self.split_keys]

    def select(self, rows: np.ndarray | list[int]) -> TokenExamples:
        return TokenExamples(
            self.inputs[rows], self.targets[rows], self.split_keys[rows], self.setting
        )

    def tensors(self) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(self.inputs.copy()), torch.from_numpy(self.targets.copy())


class TokenTask(ABC):
    """A family of scored token sequences over ids 0 .. vocab_size - 1, drawn per setting.

    teacher_forced_answers: no answer token is read as an input before every answer is due
        (MQAR: each answer is one token, then filler), so the argmax of one teacher-forced pass
        is what greedy decoding would produce; False makes `exact_match` decode greedily.
    """

    teacher_forced_answers: ClassVar[bool] = False

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    @abstractmethod
    def setting(self, entry: Mapping[str, Any], key: str) -> Setting:
        """The setting a config entry (`{seq_len: 64, num_kv_pairs: 4}`) describes, checked
        against this task: a one-line ConfigError naming `key` (e.g. `data.test_settings[2]`)
        and what to change, unless it can be drawn."""

    @abstractmethod
    def draw(self, rng: np.random.Generator, setting: Any, count: int) -> TokenExamples:
        """`count` examples of `setting`, from `rng` alone, of any split: callers keep the split
        they need with `TokenExamples.splits`."""

    def seed_words(self, setting: Any) -> tuple[int, ...]:
        """Non-negative integers naming `setting` in the seed of its fixed examples (with the
        seed and the split), so they stay the same whichever other settings are listed: the
        bytes of its name, unless a task names its settings otherwise."""
        return tuple(setting.name.encode())
