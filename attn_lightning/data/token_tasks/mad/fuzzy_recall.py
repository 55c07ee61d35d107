"""Fuzzy in-context recall (MAD, multi-query form): in-context recall where a key is a run of
1 .. K key tokens and a value a run of 1 .. W value tokens, so the model must group adjacent
tokens into one unit before it can look it up.

Vocabulary of V ids: keys 0 .. (V-1)//2 - 1, values (V-1)//2 .. V - 2, padding V - 1. A key
motif of size s is s distinct key ids in order (uniform over such motifs), likewise a value
motif; key sizes are uniform in min_key_size .. K, value sizes in 1 .. W. An example:

- pairs: each a key motif, then its value motif. Each example binds a key to the value
  drawn at its first occurrence; pairs are added while they start within
  seq_len + 1 - 2(K + W) tokens;
- a probe: a pair of the stream, uniform among them, repeated at the end;
- padding on the left up to seq_len + 1 tokens; inputs are the first seq_len, and the target
  at position t is token t + 1 where that token belongs to the value of a repeated key (or
  of the probe): every token of such a value is scored, keys never.

MAD trains with key sizes 1 .. K and tests with every key of size K (`min_key_size: K` in a
test setting); value sizes are 1 .. W in both. With V = 16 (keys 0-6, values 7-14, pad 15),
K = W = 2, seq_len = 16:

    stream : 15 15 15 15  2  7  3 12 11  2  7  0  5 11  3 12 11
    inputs : 15 15 15 15  2  7  3 12 11  2  7  0  5 11  3 12        (stream[:16])
    targets:  .  .  .  .  .  .  .  .  .  7  .  .  .  . 12 11        (stream[1:] if scored)

(pairs 2:7, 3:12 11, 2:7 again, 0 5:11, then the probe 3:12 11.)

MAD's baseline: V = 16, K = W = 3, seq_len 128, 12,800 training examples; its variations, one
at a time: V in {32, 64, 128}, seq_len in {256, 512, 1024}, training examples in {6,400,
3,200, 1,600, 800}. MAD inserts its probe pair at a uniform token offset of the stream; here
the probe repeats a uniform pair of the stream, which asks the same question: the value of a
key shown earlier, at a random distance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from attn_lightning.data.interface import IGNORE
from attn_lightning.data.token_tasks.mad.entries import entry_fields, whole
from attn_lightning.data.token_tasks.mad.recall import first_occurrence
from attn_lightning.data.token_tasks.task import TokenExamples, TokenTask
from attn_lightning.errors import ConfigError


@dataclass(frozen=True)
class FuzzyRecallSetting:
    """One length and smallest key size, e.g. `L128` (keys of 1 .. K) or `L128_k3`."""

    seq_len: int
    min_key_size: int  # key sizes are uniform in min_key_size .. key_motif_size

    @property
    def name(self) -> str:
        fixed = f"_k{self.min_key_size}" if self.min_key_size > 1 else ""
        return f"L{self.seq_len}{fixed}"


def distinct_ids(rng: np.random.Generator, shape: tuple[int, ...], n: int, k: int) -> np.ndarray:
    """shape + (k,) ids of [0, n), distinct along the last axis, uniform over ordered k-subsets:
    the i-th id is uniform over the n - i ids left, found by stepping over the ids taken, in
    increasing order."""
    ids = np.empty((*shape, k), dtype=np.int64)
    for i in range(k):
        pick = rng.integers(0, n - i, size=shape)
        for taken in np.moveaxis(np.sort(ids[..., :i], axis=-1), -1, 0):
            pick += pick >= taken
        ids[..., i] = pick
    return ids


class FuzzyRecall(TokenTask):
    """Settings `{seq_len: 128}` or `{seq_len: 128, min_key_size: 3}`; see the module
    docstring."""

    # each value's first token is due after its key; later ones after the true tokens before
    # them: a row is right under teacher forcing exactly when greedy decoding gets it right
    teacher_forced_answers: ClassVar[bool] = True
    draw_chunk: ClassVar[int] = 1024  # rows drawn at once (bounds the (rows, pairs, K) arrays)

    def __init__(self, vocab_size: int, key_motif_size: int = 3, value_motif_size: int = 3) -> None:
        num_keys = (vocab_size - 1) // 2
        if key_motif_size < 1 or key_motif_size > num_keys:
            raise ConfigError(
                f"data.task.key_motif_size must be in 1 .. {num_keys} (distinct key ids: "
                f"(data.vocab_size - 1) // 2), got {key_motif_size}; raise data.vocab_size "
                "or lower it"
            )
        if value_motif_size < 1 or value_motif_size > vocab_size - 1 - num_keys:
            raise ConfigError(
                f"data.task.value_motif_size must be in 1 .. {vocab_size - 1 - num_keys} "
                f"(distinct value ids), got {value_motif_size}; raise data.vocab_size or lower it"
            )
        if (num_keys + 1) ** key_motif_size >= 2**63:
            raise ConfigError(
                f"data.task.key_motif_size={key_motif_size} with {num_keys} key ids: too many "
                "key motifs to code in 64 bits; lower data.task.key_motif_size or data.vocab_size"
            )
        super().__init__(vocab_size)
        self.num_keys = num_keys
        self.key_motif_size = key_motif_size
        self.value_motif_size = value_motif_size
        self.pad = vocab_size - 1

    def setting(self, entry: Mapping[str, Any], key: str) -> FuzzyRecallSetting:
        fields = entry_fields(entry, key, ("seq_len",), {"min_key_size": 1})
        seq_len = whole(fields["seq_len"], "seq_len", key, 1)
        min_key_size = whole(fields["min_key_size"], "min_key_size", key, 1)
        if min_key_size > self.key_motif_size:
            raise ConfigError(
                f"{key}.min_key_size must be <= data.task.key_motif_size "
                f"({self.key_motif_size}), got {min_key_size}"
            )
        longest_pair = self.key_motif_size + self.value_motif_size
        if seq_len < 2 * longest_pair:
            raise ConfigError(
                f"{key}.seq_len must be >= {2 * longest_pair} (a pair and the probe, each up to "
                f"key_motif_size + value_motif_size tokens), got {seq_len}"
            )
        return FuzzyRecallSetting(seq_len, min_key_size)

    def draw(
        self, rng: np.random.Generator, setting: FuzzyRecallSetting, count: int
    ) -> TokenExamples:
        chunks = [
            self.draw_rows(rng, setting, min(self.draw_chunk, count - start))
            for start in range(0, count, self.draw_chunk)
        ]
        inputs = np.concatenate([inputs for inputs, _ in chunks])
        targets = np.concatenate([targets for _, targets in chunks])
        return TokenExamples(inputs, targets, inputs, setting)

    def draw_rows(
        self, rng: np.random.Generator, setting: FuzzyRecallSetting, count: int
    ) -> tuple[np.ndarray, np.ndarray]:
        K, W, length = self.key_motif_size, self.value_motif_size, setting.seq_len
        budget = length + 1 - 2 * (K + W)  # pairs start before this offset
        slots = (budget + 1) // 2  # every pair is >= 2 tokens: enough slots for the stream
        rows = np.arange(count)[:, None]

        key_sizes = rng.integers(setting.min_key_size, K + 1, size=(count, slots))
        key_ids = distinct_ids(rng, (count, slots), self.num_keys, K)  # (N, S, K)
        in_key = np.arange(K) < key_sizes[..., None]  # (N, S, K)
        # a key motif as one integer: digits (id + 1) in base num_keys + 1, zero past its size
        digits = np.where(in_key, key_ids + 1, 0)
        codes = (digits * (self.num_keys + 1) ** np.arange(K)).sum(axis=-1)  # (N, S)
        first = first_occurrence(codes)  # (N, S): the pair where each key was bound
        value_sizes = rng.integers(1, W + 1, size=(count, slots))[rows, first]
        value_ids = self.num_keys + distinct_ids(rng, (count, slots), self.pad - self.num_keys, W)
        value_ids = value_ids[rows, first]  # (N, S, W): a key keeps the value it was bound to
        starts = np.cumsum(key_sizes + value_sizes, axis=1) - (key_sizes + value_sizes)
        in_stream = starts < budget  # (N, S), a prefix of the slots
        scored = in_stream & (first < np.arange(slots))  # repeated keys

        # the probe: one more slot, a copy of a uniform pair of the stream, after its end
        num_pairs = in_stream.sum(axis=1, keepdims=True)  # (N, 1) >= 1
        probe = (rng.random((count, 1)) * num_pairs).astype(np.int64)
        last = num_pairs - 1
        stream_end = starts[rows, last] + key_sizes[rows, last] + value_sizes[rows, last]

        def with_probe(per_pair: np.ndarray, probe_value: np.ndarray) -> np.ndarray:
            return np.concatenate([per_pair, probe_value], axis=1)  # (N, S + 1, ...)

        always = np.ones((count, 1), dtype=bool)
        key_sizes = with_probe(key_sizes, key_sizes[rows, probe])
        value_sizes = with_probe(value_sizes, value_sizes[rows, probe])
        key_ids = with_probe(key_ids, key_ids[rows, probe])
        value_ids = with_probe(value_ids, value_ids[rows, probe])
        starts = with_probe(starts, stream_end)
        in_stream, scored = with_probe(in_stream, always), with_probe(scored, always)

        # every token of a pair: where it goes, whether it is there, whether it is scored
        pad = length + 1 - stream_end - key_sizes[:, -1:] - value_sizes[:, -1:]  # (N, 1) >= 1
        tokens = np.concatenate([key_ids, value_ids], axis=-1)  # (N, S + 1, K + W)
        within = np.concatenate(
            [np.broadcast_to(np.arange(K), key_ids.shape), key_sizes[..., None] + np.arange(W)],
            axis=-1,
        )
        positions = (pad + starts)[..., None] + within  # in the padded stream of seq_len + 1
        is_value = np.arange(W) < value_sizes[..., None]  # (N, S + 1, W)
        is_key = np.arange(K) < key_sizes[..., None]  # (N, S + 1, K)
        present = in_stream[..., None] & np.concatenate([is_key, is_value], axis=-1)
        answer = scored[..., None] & np.concatenate([np.zeros_like(is_key), is_value], axis=-1)

        stream = np.full((count, length + 1), self.pad, dtype=np.int64)
        answers = np.full((count, length + 1), IGNORE, dtype=np.int64)
        row_of = np.broadcast_to(rows[..., None], positions.shape)
        stream[row_of[present], positions[present]] = tokens[present]
        answers[row_of[answer], positions[answer]] = tokens[answer]
        return stream[:, :length], answers[:, 1:]
