"""Multi-pass MQAR: MQAR whose key-value context is read `passes` times before the queries, as
JRT-Prompt repeats a prompt's context (Arora, Timalsina et al. 2024, "Just read twice: closing
the recall gap for recurrent language models"; Zoology's MQAR with `num_passes`; our own code,
written from their description): on every pass after the first, a model reads each pair with
the whole context already seen once.

An example of `seq_len` tokens with n = num_kv_pairs pairs and `passes` = 2:

    inputs : k1 v1 k2 v2 | k1 v1 k2 v2 | 0 0 k2 0 k1 0 0 0 ...
    targets:             |             | . . v2 . v1 . . . ...

- the context: MQAR's n distinct keys bound to n distinct values (token_tasks/mqar.py),
  written `passes` times in the same order, 2n * passes tokens;
- the query region, as in MQAR: every key queried once after the last pass, slots by the power
  law, the target its value.

Which split an example belongs to is a hash of one pass of its context: the same pairs read once
or three times share their split.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from attn_lightning.data.token_tasks.mqar import (
    MQARSetting,
    MQARTask,
    distinct_draws,
    pairs,
    recall_examples,
)
from attn_lightning.data.token_tasks.task import TokenExamples
from attn_lightning.errors import ConfigError


class MultiPassMQARTask(MQARTask):
    """Multi-pass MQAR (see the module docstring); a setting is `{seq_len, num_kv_pairs}`.

    passes: how many times the key-value context is written before the queries.
    power_alpha and random_non_queries: as MQAR's.
    """

    def __init__(
        self,
        vocab_size: int,
        passes: int = 2,
        power_alpha: float = 0.01,
        random_non_queries: bool = False,
    ) -> None:
        super().__init__(vocab_size, power_alpha, random_non_queries)
        if passes < 1:
            raise ConfigError(f"data.task.passes must be >= 1, got {passes}")
        self.passes = passes

    def setting(self, entry: Mapping[str, Any], key: str) -> MQARSetting:
        setting = super().setting(entry, key)
        n, length = setting.num_kv_pairs, setting.seq_len
        needed = 2 * n * self.passes + 2 * n
        if length < needed:
            raise ConfigError(
                f"{key}: {n} pairs read {self.passes} times need seq_len >= {needed} (2 tokens "
                f"per pair and pass, then one 2-token query slot per key), got seq_len={length}; "
                "lower num_kv_pairs or data.task.passes, or raise seq_len"
            )
        return setting

    def draw(self, rng: np.random.Generator, setting: MQARSetting, count: int) -> TokenExamples:
        n, vocab = setting.num_kv_pairs, self.vocab_size
        keys = distinct_draws(rng, count, 1, vocab // 2, n)  # (N, n)
        values = distinct_draws(rng, count, vocab // 2, vocab, n)  # (N, n)
        once = pairs(keys, values)  # (N, 2n)
        return recall_examples(
            rng,
            setting,
            np.tile(once, self.passes),  # (N, 2n * passes)
            once,
            keys,
            values,
            vocab,
            self.power_alpha,
            self.random_non_queries,
        )
