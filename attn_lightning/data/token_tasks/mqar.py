"""Multi-query associative recall (MQAR), as constructed in Zoology (Arora, Eyuboglu et al.
2023, "Zoology: Measuring and improving recall in efficient language models", Section 3 and
`zoology/data/multiquery_ar.py`; our own code, written from that description).

An example of `seq_len` tokens over a vocabulary of `vocab_size` ids:

    keys   : ids 1 .. V/2 - 1          values : ids V/2 .. V - 1        filler: id 0
    inputs : k1 v1 k2 v2 ... kn vn | 0 0 k2 0 0 0 k1 0 ...      (n = num_kv_pairs)
    targets: -100 ...          -100 | . . v2 . . . v1 . ...      (-100 everywhere else)

- the context: n distinct keys, each bound to one of n distinct values, as 2n tokens;
- the query region: the remaining seq_len - 2n positions, read as (seq_len - 2n) / 2 slots of
  two tokens; every key is queried exactly once, at the first token of a slot, the slots drawn
  without replacement with P(slot i) proportional to (i + 1)^(alpha - 1) (Zoology's power law of
  recall distances, alpha = 0.01: queries bunch near the context);
- the target at a query's position is its key's value, the only scored targets: a model has
  to read the value back from the context. No answer ever appears in the inputs after its
  query, so teacher-forced predictions are the greedy ones;
- the other positions hold the filler id 0, or with `random_non_queries` a uniform random id
  of the whole vocabulary (Zoology's default; its Figure 2 runs use zeros).

Which split an example belongs to is a hash of its context (`split_of` of the key-value
tokens): a context held out for val or test never appears in training, at any length or query
placement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from attn_lightning.data.interface import IGNORE
from attn_lightning.data.token_tasks.task import Setting, TokenExamples, TokenTask, int_fields
from attn_lightning.errors import ConfigError

FILLER = 0  # the token of the non-query positions without random_non_queries


@dataclass(frozen=True)
class MQARSetting:
    """One (sequence length, number of key-value pairs) of the task, e.g. `L64_kv4`."""

    seq_len: int
    num_kv_pairs: int

    @property
    def name(self) -> str:
        return f"L{self.seq_len}_kv{self.num_kv_pairs}"

    @property
    def query_slots(self) -> int:
        """Two-token slots after the context, each able to hold one query."""
        return (self.seq_len - 2 * self.num_kv_pairs) // 2

    def check(self, vocab_size: int, key: str) -> None:
        """A one-line ConfigError naming `key` (the config entry) unless the setting fits."""
        n, length = self.num_kv_pairs, self.seq_len
        if n < 1 or length < 2:
            raise ConfigError(f"{key}: need num_kv_pairs >= 1 and seq_len >= 2, got {self}")
        if self.query_slots < n:
            raise ConfigError(
                f"{key}: {n} key-value pairs need seq_len >= {4 * n} (2 tokens per pair, then "
                f"one 2-token query slot per key), got seq_len={length}; lower num_kv_pairs "
                "or raise seq_len"
            )
        if vocab_size // 2 - 1 < n:
            raise ConfigError(
                f"{key}: {n} distinct keys need data.vocab_size >= {2 * n + 2} (keys are ids "
                f"1..V/2-1), got {vocab_size}; raise data.vocab_size or lower num_kv_pairs"
            )


def query_slot_probabilities(slots: int, alpha: float) -> np.ndarray:
    """P(slot i) proportional to (i + 1)^(alpha - 1), i = 0 .. slots - 1."""
    weights = np.arange(1, slots + 1, dtype=np.float64) ** (alpha - 1.0)
    return weights / weights.sum()


def distinct_draws(rng: np.random.Generator, rows: int, low: int, high: int, k: int) -> np.ndarray:
    """(rows, k) ids from [low, high), distinct within a row, uniform over ordered k-subsets:
    the ids of the k smallest of one uniform score per id, in order of score (a vectorised
    `Generator.choice(..., replace=False)`, which draws one row per call)."""
    scores = rng.random((rows, high - low))
    smallest = np.argpartition(scores, k - 1, axis=1)[:, :k]  # the k ids, in no random order
    order = np.argsort(np.take_along_axis(scores, smallest, axis=1), axis=1)
    return low + np.take_along_axis(smallest, order, axis=1)


def weighted_distinct_draws(
    rng: np.random.Generator, rows: int, p: np.ndarray, k: int
) -> np.ndarray:
    """(rows, k) indices drawn without replacement with probabilities p (successive sampling,
    as `Generator.choice(len(p), k, replace=False, p=p)` draws one row): the top k of
    log p + Gumbel noise (Gumbel-top-k, Vieira 2014; Kool et al. 2019), for all rows at once."""
    keys = np.log(p) + rng.gumbel(size=(rows, len(p)))
    return np.argsort(-keys, axis=1)[:, :k]


def pairs(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(N, m) keys and (N, m) values -> (N, 2m) tokens k1 v1 k2 v2 ..."""
    context = np.empty((len(keys), 2 * keys.shape[1]), dtype=np.int64)
    context[:, 0::2] = keys
    context[:, 1::2] = values
    return context


def recall_examples(
    rng: np.random.Generator,
    setting: Setting,
    context: np.ndarray,
    split_keys: np.ndarray,
    keys: np.ndarray,
    answers: np.ndarray,
    vocab_size: int,
    alpha: float,
    random_non_queries: bool,
) -> TokenExamples:
    """Examples of `setting.seq_len` tokens: `context` (N, C), then each of the n `keys` (N, n)
    queried once, at the first token of a two-token slot of the query region drawn by the power
    law, its target the matching entry of `answers` (N, n); filler (or random ids) elsewhere."""
    count, length, start = len(context), setting.seq_len, context.shape[1]
    probabilities = query_slot_probabilities((length - start) // 2, alpha)
    slots = weighted_distinct_draws(rng, count, probabilities, keys.shape[1])  # (N, n)
    inputs = np.full((count, length), FILLER, dtype=np.int64)
    if random_non_queries:
        inputs = rng.integers(0, vocab_size, size=(count, length), dtype=np.int64)
    targets = np.full((count, length), IGNORE, dtype=np.int64)
    inputs[:, :start] = context
    query_positions = start + 2 * slots  # (N, n): key j is queried at query_positions[:, j]
    rows = np.arange(count)[:, None]
    inputs[rows, query_positions] = keys
    targets[rows, query_positions] = answers
    return TokenExamples(inputs, targets, split_keys, setting)


def draw_examples(
    rng: np.random.Generator,
    setting: MQARSetting,
    count: int,
    vocab_size: int,
    alpha: float,
    random_non_queries: bool,
) -> TokenExamples:
    """`count` examples of `setting`, split by their key-value context."""
    n, half = setting.num_kv_pairs, vocab_size // 2
    keys = distinct_draws(rng, count, 1, half, n)  # (N, n)
    values = distinct_draws(rng, count, half, vocab_size, n)  # (N, n)
    context = pairs(keys, values)  # (N, 2n)
    return recall_examples(
        rng, setting, context, context, keys, values, vocab_size, alpha, random_non_queries
    )


class MQARTask(TokenTask):
    """MQAR over ids 0 .. vocab_size - 1 (see the module docstring); a setting is
    `{seq_len, num_kv_pairs}`.

    power_alpha: P(query slot i) proportional to (i + 1)^(alpha - 1); 1 is uniform.
    random_non_queries: the non-query positions hold uniform random ids, not the filler 0.
    """

    teacher_forced_answers = True  # no answer is an input: argmax of one forward pass

    def __init__(
        self, vocab_size: int, power_alpha: float = 0.01, random_non_queries: bool = False
    ) -> None:
        super().__init__(vocab_size)
        if power_alpha <= 0:
            raise ConfigError(f"data.task.power_alpha must be > 0 (1 = uniform), got {power_alpha}")
        self.power_alpha = power_alpha
        self.random_non_queries = random_non_queries

    def setting(self, entry: Mapping[str, Any], key: str) -> MQARSetting:
        setting = MQARSetting(*int_fields(entry, key, ("seq_len", "num_kv_pairs")))
        setting.check(self.vocab_size, key)
        return setting

    def seed_words(self, setting: MQARSetting) -> tuple[int, ...]:
        return (setting.seq_len, setting.num_kv_pairs)

    def draw(self, rng: np.random.Generator, setting: MQARSetting, count: int) -> TokenExamples:
        return draw_examples(
            rng, setting, count, self.vocab_size, self.power_alpha, self.random_non_queries
        )
