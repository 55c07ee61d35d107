"""Forgetting MQAR: MQAR whose context reassigns some keys a new value, each query answered by
its key's last value (Zoology's `forgetting_mqar`, Arora, Eyuboglu et al.; our own code, written
from its description). A model must overwrite an association, not only store one.

An example of `seq_len` tokens, with n = num_kv_pairs keys of which u = num_updates are
reassigned (keys A B C D, values 5 3 7 2; C and A get 9 and 6):

    inputs : A 5 B 3 C 7 D 2 | C 9 A 6 | 0 0 A 0 D 0 0 0 C 0 B 0 ...
    targets:                 |         | . . 6 . 2 . . . 9 . 3 . ...

- the first bindings: n distinct keys, each bound to one of n distinct values (MQAR's context);
- the updates: u distinct keys among the n, in random order, each followed by a new value drawn
  uniformly from the value ids other than the key's first value, so the first value is wrong
  for every reassigned key;
- the query region, as in MQAR (token_tasks/mqar.py): every one of the n keys queried
  once after the 2(n + u) context tokens, slots by the power law, the target its key's last
  value: the update's for a reassigned key, the first for the others.

Which split an example belongs to is a hash of its whole context, updates included.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from attn_lightning.data.token_tasks.mqar import MQARTask, distinct_draws, pairs, recall_examples
from attn_lightning.data.token_tasks.task import TokenExamples, int_fields
from attn_lightning.errors import ConfigError


@dataclass(frozen=True)
class ForgettingSetting:
    """One (length, pairs, updates) of the task, e.g. `L64_kv8_u4`."""

    seq_len: int
    num_kv_pairs: int
    num_updates: int

    @property
    def name(self) -> str:
        return f"L{self.seq_len}_kv{self.num_kv_pairs}_u{self.num_updates}"

    def check(self, vocab_size: int, key: str) -> None:
        """A one-line ConfigError naming `key` (the config entry) unless the setting fits."""
        n, u, length = self.num_kv_pairs, self.num_updates, self.seq_len
        if n < 1 or not 1 <= u <= n:
            raise ConfigError(
                f"{key}: need num_kv_pairs >= 1 and 1 <= num_updates <= num_kv_pairs (each update "
                f"reassigns a different key), got {self}"
            )
        if length < 2 * (n + u) + 2 * n:
            raise ConfigError(
                f"{key}: {n} pairs and {u} updates need seq_len >= {2 * (n + u) + 2 * n} (2 "
                f"tokens per pair and update, then one 2-token query slot per key), got "
                f"seq_len={length}; lower num_kv_pairs or num_updates, or raise seq_len"
            )
        if vocab_size // 2 - 1 < n:
            raise ConfigError(
                f"{key}: {n} distinct keys need data.vocab_size >= {2 * n + 2} (keys are ids "
                f"1..V/2-1), got {vocab_size}; raise data.vocab_size or lower num_kv_pairs"
            )


class ForgettingMQARTask(MQARTask):
    """Forgetting MQAR (see the module docstring); a setting is
    `{seq_len, num_kv_pairs, num_updates}`; power_alpha and random_non_queries as MQAR's."""

    def setting(self, entry: Mapping[str, Any], key: str) -> ForgettingSetting:
        names = ("seq_len", "num_kv_pairs", "num_updates")
        setting = ForgettingSetting(*int_fields(entry, key, names))
        setting.check(self.vocab_size, key)
        return setting

    def seed_words(self, setting: ForgettingSetting) -> tuple[int, ...]:
        return (setting.seq_len, setting.num_kv_pairs, setting.num_updates)

    def draw(
        self, rng: np.random.Generator, setting: ForgettingSetting, count: int
    ) -> TokenExamples:
        n, u, vocab = setting.num_kv_pairs, setting.num_updates, self.vocab_size
        half = vocab // 2
        keys = distinct_draws(rng, count, 1, half, n)  # (N, n)
        first = distinct_draws(rng, count, half, vocab, n)  # (N, n)
        updated = distinct_draws(rng, count, 0, n, u)  # (N, u): which keys, in update order
        # a uniform value id other than the first: shift it by 1 .. (V - V/2 - 1), cyclically
        shift = rng.integers(1, vocab - half, size=(count, u))
        new = half + (np.take_along_axis(first, updated, axis=1) - half + shift) % (vocab - half)
        last = first.copy()
        np.put_along_axis(last, updated, new, axis=1)
        context = np.concatenate(
            [pairs(keys, first), pairs(np.take_along_axis(keys, updated, axis=1), new)], axis=1
        )  # (N, 2(n + u))
        return recall_examples(
            rng,
            setting,
            context,
            context,
            keys,
            last,
            vocab,
            self.power_alpha,
            self.random_non_queries,
        )
