"""Memorization (MAD): a key-value map fixed for the whole task (the same in every example,
train and test alike); each key is followed by an insert token, where its value is due. The
model can only answer from its weights: the task tests memorising facts, not reading them.

Vocabulary of V ids: keys 0 .. K - 1 with K = (V - 1) // 2, values K .. V - 2, insert V - 1.
The map sends key i to value K + p[i], p a permutation of the V - 1 - K value offsets drawn
from `map_seed` alone (MAD: the experiment's seed; here a task option, so the map stays put
when the training seed varies). An example of seq_len (even) tokens is seq_len / 2 pairs
(key, insert), keys uniform with repetition; the target at each insert token is its key's
value, and nothing else is scored. With V = 8 (keys 0-2, values 3-6, insert 7) and the map
0 -> 5, 1 -> 3, 2 -> 6, seq_len = 6:

    inputs : 2  7  0  7  2  7
    targets: .  6  .  5  .  6        (. = IGNORE)

MAD's baseline: V = 256, seq_len 32, 256 training examples (a fixed set, trained for many
epochs), 1,280 test examples; its variation: V in {512, 1024, 2048, 4096, 8192}.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from attn_lightning.data.interface import IGNORE
from attn_lightning.data.token_tasks.mad.entries import entry_fields, whole
from attn_lightning.data.token_tasks.task import TokenExamples, TokenTask
from attn_lightning.errors import ConfigError


@dataclass(frozen=True)
class MemorizationSetting:
    """One length, e.g. `L32`."""

    seq_len: int

    @property
    def name(self) -> str:
        return f"L{self.seq_len}"


class Memorization(TokenTask):
    """Settings `{seq_len: 32}`; see the module docstring."""

    teacher_forced_answers: ClassVar[bool] = True  # values are due at insert tokens

    def __init__(self, vocab_size: int, map_seed: int = 12345) -> None:
        if vocab_size < 4:
            raise ConfigError(
                f"data.vocab_size must be >= 4 (keys, values, insert), got {vocab_size}"
            )
        super().__init__(vocab_size)
        self.num_keys = (vocab_size - 1) // 2
        self.insert = vocab_size - 1
        offsets = np.random.default_rng(map_seed).permutation(vocab_size - 1 - self.num_keys)
        self.value_of = self.num_keys + offsets[: self.num_keys]  # (K,): key i -> its value

    def setting(self, entry: Mapping[str, Any], key: str) -> MemorizationSetting:
        fields = entry_fields(entry, key, ("seq_len",))
        seq_len = whole(fields["seq_len"], "seq_len", key, 2)
        if seq_len % 2:
            raise ConfigError(f"{key}.seq_len must be even (key, insert pairs), got {seq_len}")
        return MemorizationSetting(seq_len)

    def draw(
        self, rng: np.random.Generator, setting: MemorizationSetting, count: int
    ) -> TokenExamples:
        keys = rng.integers(0, self.num_keys, size=(count, setting.seq_len // 2))
        inputs = np.full((count, setting.seq_len), self.insert, dtype=np.int64)
        inputs[:, 0::2] = keys
        targets = np.full((count, setting.seq_len), IGNORE, dtype=np.int64)
        targets[:, 1::2] = self.value_of[keys]
        return TokenExamples(inputs, targets, keys, setting)
