"""The key-value stream shared by in-context recall and noisy recall (MAD's multi-query form),
and the first-occurrence look-up that fuzzy recall shares.

An example of `seq_len` (even) tokens is seq_len / 2 two-token slots:

- slots 1 .. seq_len/2 - 1: a key-value pair, or (with probability `frac_noise`) two noise
  tokens. Keys are uniform over the key ids; each example binds every key to a value drawn
  uniformly from the value ids (two keys may share a value), and a pair always carries its
  key's value. One slot, uniform among them, is never noise, so a key is always presented;
- the last slot: a probe, a key uniform among the distinct keys presented, then its value;
- scored: the value of every pair whose key occurred in an earlier pair, and the probe's
  value; the target sits at the key's position (the value is due after reading the key).
  Noise, first occurrences and keys are not scored, nor the last position (its next token
  lies past the example).

MAD builds the same stream and feeds its first seq_len - 1 tokens; ours keeps the probe's
value as the last input (unscored), so an example is seq_len tokens with the same answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attn_lightning.data.interface import IGNORE
from attn_lightning.errors import ConfigError


def first_occurrence(codes: np.ndarray) -> np.ndarray:
    """(N, P) -> (N, P): index of the first entry of the row equal to each entry (itself when
    it is the first). A stable sort puts equal codes together in order of position."""
    positions = np.arange(codes.shape[1])
    order = np.argsort(codes, axis=1, kind="stable")  # (N, P)
    ordered = np.take_along_axis(codes, order, axis=1)
    new_group = np.ones(ordered.shape, dtype=bool)
    new_group[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group_start = np.maximum.accumulate(np.where(new_group, positions, 0), axis=1)
    first = np.empty_like(order)
    np.put_along_axis(first, order, np.take_along_axis(order, group_start, axis=1), axis=1)
    return first


def draw_recall_stream(
    rng: np.random.Generator,
    count: int,
    seq_len: int,
    num_keys: int,
    num_values: int,
    noise_ids: tuple[int, int],
    frac_noise: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), (count, seq_len) each: keys are ids 0 .. num_keys - 1, values the
    next num_values ids, noise ids in [noise_ids[0], noise_ids[1])."""
    pairs = seq_len // 2 - 1  # slots before the probe
    rows = np.arange(count)
    keys = rng.integers(0, num_keys, size=(count, pairs))
    value_of = rng.integers(num_keys, num_keys + num_values, size=(count, num_keys))
    values = np.take_along_axis(value_of, keys, axis=1)  # (N, pairs)
    noise = rng.random((count, pairs)) < frac_noise
    noise[rows, rng.integers(0, pairs, size=count)] = False
    # a noise slot gets a code of its own, so it never matches a key
    codes = np.where(noise, num_keys + np.arange(pairs), keys)
    first = first_occurrence(codes) == np.arange(pairs)  # (N, pairs)
    scored = ~noise & ~first
    presented = np.where(~noise & first, rng.random((count, pairs)), -1.0)
    probe_key = keys[rows, presented.argmax(axis=1)]  # uniform over distinct presented keys

    inputs = np.empty((count, seq_len), dtype=np.int64)
    targets = np.full((count, seq_len), IGNORE, dtype=np.int64)
    noise_tokens = np.zeros((count, pairs, 2), dtype=np.int64)
    if noise.any():
        noise_tokens = rng.integers(*noise_ids, size=(count, pairs, 2))
    inputs[:, 0:-2:2] = np.where(noise, noise_tokens[..., 0], keys)
    inputs[:, 1:-2:2] = np.where(noise, noise_tokens[..., 1], values)
    inputs[:, -2] = probe_key
    inputs[:, -1] = value_of[rows, probe_key]
    targets[:, 0:-2:2] = np.where(scored, values, IGNORE)
    targets[:, -2] = inputs[:, -1]
    return inputs, targets


@dataclass(frozen=True)
class RecallSetting:
    """One length (and noise level) of in-context or noisy recall, e.g. `L128_noise20` (the
    noise in percent, as the split names hold no dot: `test_L128_noise20`)."""

    seq_len: int
    frac_noise: float = 0.0

    @property
    def name(self) -> str:
        percent = f"{100 * self.frac_noise:g}".replace(".", "p")  # 12.5% -> 12p5
        noise = f"_noise{percent}" if self.frac_noise > 0 else ""
        return f"L{self.seq_len}{noise}"

    def check(self, key: str) -> None:
        if self.seq_len < 4 or self.seq_len % 2:
            raise ConfigError(
                f"{key}.seq_len must be even and >= 4 (key-value pairs, then a probe pair), "
                f"got {self.seq_len}"
            )
        if not 0.0 <= self.frac_noise < 1.0:
            raise ConfigError(f"{key}.frac_noise must be in [0, 1), got {self.frac_noise}")
