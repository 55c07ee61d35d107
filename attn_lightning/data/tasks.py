"""Synthetic sequence tasks: copy, addition, sorting.

An example is one character string `prompt = answer .` over a small task vocabulary
(newline as padding, `=` separator, `.` end of answer, the task's symbols), e.g.

    copy      3141592653589793=3141592653589793.
    sorting   3141592653589793=1123345556789999.
    addition  123+456=9750.        (579 zero-padded to 4 digits, least-significant digit first)

A task draws (prompt, answer) pairs from a numpy Generator; `long=True` draws from the
length-generalisation split, whose prompts are longer than any training prompt. Which of
train / val / test a prompt belongs to is a hash of the prompt (`split_of`), so the three
sets partition the example space and never share an example, whatever was sampled.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod

import numpy as np

from attn_lightning.errors import ConfigError

# Padding is a newline: an example reads as one line of text, and a language-model prompt of
# "\n" (the text-sample callback's default) is a valid token of every task.
PAD, SEP, EOS = "\n", "=", "."
SPECIALS = PAD + SEP + EOS  # ids 0, 1, 2
SYMBOLS = "0123456789abcdefghijklmnopqrstuvwxyz"

SPLITS = ("train", "val", "test")


def split_of(prompt: str, eval_fraction: float) -> str:
    """The split a prompt belongs to: a hash bucket in [0, 1) below eval_fraction is val,
    the next eval_fraction is test, the rest train. Same prompt, same split, on any machine."""
    digest = hashlib.blake2b(prompt.encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "little") / 2**64
    return "val" if u < eval_fraction else "test" if u < 2 * eval_fraction else "train"


class Task(ABC):
    """A family of (prompt, answer) pairs; subclasses define `symbols` and `sample`."""

    symbols: str

    @property
    def vocabulary(self) -> str:
        """The characters of the task, padding first (id 0): a CharTokenizer's `chars`."""
        return SPECIALS + self.symbols

    @abstractmethod
    def sample(self, rng: np.random.Generator, long: bool = False) -> tuple[str, str]:
        """One (prompt, answer) pair; `long` draws from the length-generalisation split."""

    @abstractmethod
    def max_lengths(self, long: bool = False) -> tuple[int, int]:
        """Longest (prompt, answer) of the split, in characters."""

    def max_sequence_length(self, long: bool = False) -> int:
        """Characters of the longest `prompt = answer .` string of the split."""
        prompt, answer = self.max_lengths(long)
        return prompt + 1 + answer + 1


def _check_symbols(num_symbols: int) -> None:
    if not 2 <= num_symbols <= len(SYMBOLS):
        raise ConfigError(
            f"data.task.num_symbols must be in [2, {len(SYMBOLS)}], got {num_symbols}"
        )


class _SequenceTask(Task):
    """A random sequence of `num_symbols` symbols, `min_length` to `length` long (exactly
    `long_length` in the length-generalisation split)."""

    def __init__(
        self, length: int, long_length: int, num_symbols: int = 10, min_length: int | None = None
    ) -> None:
        _check_symbols(num_symbols)
        min_length = length if min_length is None else min_length
        if not 1 <= min_length <= length < long_length:
            raise ConfigError(
                "need 1 <= data.task.min_length <= data.task.length < data.task.long_length, got "
                f"{min_length}, {length}, {long_length}"
            )
        self.length, self.long_length, self.min_length = length, long_length, min_length
        self.symbols = SYMBOLS[:num_symbols]

    def _sequence(self, rng: np.random.Generator, long: bool) -> str:
        n = self.long_length if long else int(rng.integers(self.min_length, self.length + 1))
        return "".join(self.symbols[i] for i in rng.integers(0, len(self.symbols), n))

    def max_lengths(self, long: bool = False) -> tuple[int, int]:
        n = self.long_length if long else self.length
        return n, n


class CopyTask(_SequenceTask):
    """Reproduce the prompt: `3141=3141.`"""

    def sample(self, rng: np.random.Generator, long: bool = False) -> tuple[str, str]:
        seq = self._sequence(rng, long)
        return seq, seq


class SortingTask(_SequenceTask):
    """Sort the prompt's symbols: `3141=1134.`"""

    def sample(self, rng: np.random.Generator, long: bool = False) -> tuple[str, str]:
        seq = self._sequence(rng, long)
        return seq, "".join(sorted(seq, key=self.symbols.index))


class AdditionTask(Task):
    """Add two `num_digits`-digit numbers (zero-padded): `123+456=0579.`, or with
    `reverse_answer` the sum least-significant digit first, `123+456=9750.`, which lets a causal
    model emit each digit after the carry it depends on (Lee et al. 2023, "Teaching Arithmetic
    to Small Transformers"). The length-generalisation split uses `long_num_digits` digits."""

    symbols = "0123456789+"

    def __init__(self, num_digits: int, long_num_digits: int, reverse_answer: bool = True) -> None:
        if not 1 <= num_digits < long_num_digits <= 18:
            raise ConfigError(
                "need 1 <= data.task.num_digits < data.task.long_num_digits <= 18, got "
                f"{num_digits}, {long_num_digits}"
            )
        self.num_digits, self.long_num_digits = num_digits, long_num_digits
        self.reverse_answer = reverse_answer

    def sample(self, rng: np.random.Generator, long: bool = False) -> tuple[str, str]:
        d = self.long_num_digits if long else self.num_digits
        a, b = (int(v) for v in rng.integers(0, 10**d, size=2))
        answer = f"{a + b:0{d + 1}d}"
        return f"{a:0{d}d}+{b:0{d}d}", answer[::-1] if self.reverse_answer else answer

    def max_lengths(self, long: bool = False) -> tuple[int, int]:
        d = self.long_num_digits if long else self.num_digits
        return 2 * d + 1, d + 1
