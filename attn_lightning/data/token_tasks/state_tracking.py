"""State tracking: the word problem of a finite group, one answer per position (Merrill, Petty
& Sabharwal 2024, "The Illusion of State in State-Space Models"; Grazzi et al. 2025,
"Unlocking State-Tracking in Linear RNNs Through Negative Eigenvalues"; our own code, written
from their description).

An example is a sequence of group elements g_0 .. g_{L-1}, one token each, drawn uniformly; the
target at position t is the running product s_t of the elements read so far, one token too:

    s_0 = g_0,    s_t = g_t ∘ s_{t-1}        (apply g_0 first, then g_1, ...)

- S5, the permutations of {0..4}: 120 tokens, id = rank of the permutation written as the tuple
  (p(0), .., p(4)) in lexicographic order (id 0 is the identity). Composition: (a ∘ b)(i) =
  a(b(i)), so as tuples s_t[i] = g_t[s_{t-1}[i]]: s_t sends i to where g_0, then g_1, ...,
  then g_t carry it. Example, with swaps of 0,1 then of 1,2:

      inputs : (1,0,2,3,4) = id 24     (0,2,1,3,4) = id 6
      targets: (1,0,2,3,4) = id 24     (2,0,1,3,4) = id 48

  S5 is not solvable: its word problem is NC1-complete, so unless TC0 = NC1 no fixed-depth
  transformer or diagonal state-space model solves it at every length (Merrill et al.); a
  linear RNN does with non-diagonal transitions whose eigenvalues may be negative (Grazzi et
  al.).
- Parity, the group Z2 = {0, 1} under addition mod 2: inputs are bits, the target at t is
  the parity of the first t + 1 bits (input id b is the bit b, target id the parity). A linear
  RNN with only positive eigenvalues cannot track it at every length (Grazzi et al.).

Every position is scored, and no answer is an input, so teacher-forced predictions are the
greedy ones. A setting is a length (`L32`); testing at lengths beyond training measures length
extrapolation.

Which split an example belongs to is a hash of its first `split_prefix` tokens: its answers at
those positions, and the inputs that decide them, are what make it the example it is, and every
longer or shorter sequence starting the same way shares its split. So no evaluation example
shares a prefix of `split_prefix` or more tokens with a training example, at any length (an
evaluation example at L16 is never the start of a training one at L32). Every setting's length
must therefore be at least `split_prefix`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from attn_lightning.data.token_tasks.task import TokenExamples, TokenTask, int_fields
from attn_lightning.errors import ConfigError


@dataclass(frozen=True)
class LengthSetting:
    """One sequence length of a word problem, e.g. `L32`."""

    seq_len: int

    @property
    def name(self) -> str:
        return f"L{self.seq_len}"


def s5_elements() -> np.ndarray:
    """(120, 5): the permutations of {0..4} as tuples (p(0), .., p(4)), in lexicographic
    order: row i is the element of id i, row 0 the identity."""
    return np.array(list(itertools.permutations(range(5))), dtype=np.int64)


def s5_table() -> np.ndarray:
    """(120, 120): table[s, g] = id of g ∘ s, i.e. of the tuple g[s[i]] for i = 0..4."""
    elements = s5_elements()
    composed = elements[np.arange(120)[None, :, None], elements[:, None, :]]  # (s, g, 5)
    code = 5 ** np.arange(4, -1, -1)  # a tuple's base-5 number, increasing with its order
    id_of_code = np.full(5**5, -1, dtype=np.int64)
    id_of_code[elements @ code] = np.arange(120)
    return id_of_code[composed @ code]


PARITY_TABLE = np.array([[0, 1], [1, 0]], dtype=np.int64)  # table[s, b] = s xor b


class WordProblem(TokenTask):
    """The word problem of a group given by its table (see the module docstring).

    table: (G, G), table[s, g] = id of g ∘ s; id 0 is the identity; token ids are element ids.
    split_prefix: the leading tokens whose hash decides an example's split.
    """

    teacher_forced_answers = True

    def __init__(self, table: np.ndarray, split_prefix: int) -> None:
        super().__init__(len(table))
        if split_prefix < 1:
            raise ConfigError(f"data.task.split_prefix must be >= 1, got {split_prefix}")
        self.table = table
        self.split_prefix = split_prefix

    def setting(self, entry: Mapping[str, Any], key: str) -> LengthSetting:
        (seq_len,) = int_fields(entry, key, ["seq_len"])
        if seq_len < self.split_prefix:
            raise ConfigError(
                f"{key}: seq_len={seq_len} is shorter than data.task.split_prefix="
                f"{self.split_prefix} (the tokens that decide an example's split); raise "
                "seq_len or lower data.task.split_prefix"
            )
        return LengthSetting(seq_len)

    def draw(self, rng: np.random.Generator, setting: LengthSetting, count: int) -> TokenExamples:
        inputs = rng.integers(0, self.vocab_size, size=(count, setting.seq_len), dtype=np.int64)
        targets = np.empty_like(inputs)  # (N, L)
        state = np.zeros(count, dtype=np.int64)  # (N,) the identity before any input
        for t in range(setting.seq_len):
            state = self.table[state, inputs[:, t]]
            targets[:, t] = state
        return TokenExamples(inputs, targets, inputs[:, : self.split_prefix].copy(), setting)


class S5(WordProblem):
    """The word problem of S5: 120 permutation tokens, running composition as the answer."""

    def __init__(self, split_prefix: int = 4) -> None:
        super().__init__(s5_table(), split_prefix)


class Parity(WordProblem):
    """Running parity of a bit sequence: the word problem of Z2."""

    def __init__(self, split_prefix: int = 16) -> None:
        super().__init__(PARITY_TABLE, split_prefix)
