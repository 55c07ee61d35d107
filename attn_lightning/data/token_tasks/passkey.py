"""Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention: Random-Access Infinite
Context Length for Transformers"; the needle probe of RULER, Hsieh et al. 2024),
in token form: our own code, written from the paper's description.

A passkey of `digits` random digits hides in a haystack of filler, at a chosen depth; at the end
a query asks for it, and its digits are the answer:

    filler ... KEY d1 .. dk  filler ... QUERY d1 .. d(k-1)
    targets:                           d1    d2 .. dk            (IGNORE everywhere else)

- filler: the paper's repeating text "The grass is green. The sky is blue. The sun is yellow.
  Here we go. There and back again." as word tokens (the 24 tokens below, one id per distinct
  word), repeated from the first position; the needle is spliced in, so the haystack reads the
  same text at every depth;
- the needle: KEY ("The pass key is") then the passkey's digits;
- the query: QUERY ("What is the pass key? The pass key is"), then the answer. The answer is
  scored at every digit and some digits are inputs before later ones are due, so exact match
  decodes greedily from the query on;
- depth: the needle's place as a fraction of the filler: after round(depth * F) of the
  F = seq_len - 2k - 1 filler tokens (0: first, 1: just before the query). A setting is (seq_len,
  depth), named `L256_d50` (depth in percent); depth null places each needle uniformly at random
  (`L256_dany`), the training distribution that covers every depth.

Vocabulary (28 ids): the 16 filler words 0..15, KEY 16, QUERY 17, the digits 0..9 as 18..27.

Which split an example belongs to is a hash of its passkey alone: the filler is fixed and the
depth is the setting, so the digits are all that make an example the one it is, and no test
passkey is ever trained on, at any depth or length.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from attn_lightning.data.interface import IGNORE
from attn_lightning.data.token_tasks.task import TokenExamples, TokenTask
from attn_lightning.errors import ConfigError

FILLER_TEXT = (
    "the grass is green . the sky is blue . the sun is yellow . here we go . there and back again ."
)
WORDS = tuple(dict.fromkeys(FILLER_TEXT.split()))  # the 16 distinct filler words: ids 0..15
FILLER = np.array([WORDS.index(w) for w in FILLER_TEXT.split()], dtype=np.int64)  # (24,)
KEY = len(WORDS)  # "The pass key is", before the passkey
QUERY = KEY + 1  # "What is the pass key? The pass key is", before the answer
DIGIT_0 = QUERY + 1  # digit d is id DIGIT_0 + d
VOCAB_SIZE = DIGIT_0 + 10


@dataclass(frozen=True)
class PasskeySetting:
    """One (sequence length, depth) of the task, e.g. `L256_d50`; depth None: uniform."""

    seq_len: int
    depth: float | None

    @property
    def name(self) -> str:
        if self.depth is None:
            return f"L{self.seq_len}_dany"
        return f"L{self.seq_len}_d" + f"{100 * self.depth:g}".replace(".", "p")


def is_number(value: Any, kinds: type | tuple[type, ...]) -> bool:
    """`value` is an instance of `kinds`, and not a bool (which Python counts as an int)."""
    return isinstance(value, kinds) and not isinstance(value, bool)


class Passkey(TokenTask):
    """Find the passkey in the filler (see the module docstring).

    digits: the passkey's length in digits.
    """

    teacher_forced_answers = False  # digits of the answer are inputs before the last is due

    def __init__(self, digits: int = 5) -> None:
        super().__init__(VOCAB_SIZE)
        if digits < 1:
            raise ConfigError(f"data.task.digits must be >= 1, got {digits}")
        self.digits = digits

    def filler_len(self, seq_len: int) -> int:
        """F: the filler tokens of an example, around the needle and before the query."""
        return seq_len - 2 * self.digits - 1

    def setting(self, entry: Mapping[str, Any], key: str) -> PasskeySetting:
        if not isinstance(entry, Mapping) or set(entry) != {"seq_len", "depth"}:
            raise ConfigError(
                f"{key} = {entry}: give exactly seq_len and depth (a fraction in [0, 1], or null "
                "for a uniform depth)"
            )
        seq_len, depth = entry["seq_len"], entry["depth"]
        if not is_number(seq_len, int) or not (depth is None or is_number(depth, (int, float))):
            raise ConfigError(
                f"{key} = {dict(entry)}: seq_len must be an integer, depth a number or null"
            )
        if depth is not None and not 0.0 <= depth <= 1.0:
            raise ConfigError(
                f"{key}: depth={depth} is outside [0, 1] (the passkey's place in the filler: 0 "
                "first, 1 just before the query); give a fraction in [0, 1], or null for uniform"
            )
        if self.filler_len(seq_len) < 0:
            raise ConfigError(
                f"{key}: seq_len={seq_len} cannot hold a {self.digits}-digit passkey and its "
                f"query (KEY + {self.digits} digits, QUERY + {self.digits - 1}); need seq_len >= "
                f"{2 * self.digits + 1}, or lower data.task.digits"
            )
        return PasskeySetting(seq_len, None if depth is None else float(depth))

    def draw(self, rng: np.random.Generator, setting: PasskeySetting, count: int) -> TokenExamples:
        k, length = self.digits, setting.seq_len
        filler_len = self.filler_len(length)
        passkeys = rng.integers(0, 10, size=(count, k), dtype=np.int64)  # (N, k)
        if setting.depth is None:
            needle_at = rng.integers(0, filler_len + 1, size=count)  # (N,)
        else:
            needle_at = np.full(count, int(np.floor(setting.depth * filler_len + 0.5)))
        query_at = filler_len + k + 1
        position = np.arange(query_at)[None, :]  # (1, Q): the haystack and its needle
        offset = position - needle_at[:, None]  # (N, Q): position within the needle
        in_needle = (offset >= 0) & (offset <= k)
        filler_index = np.where(offset < 0, position, position - k - 1) % len(FILLER)
        needle = np.where(
            offset == 0,
            KEY,
            DIGIT_0 + np.take_along_axis(passkeys, np.clip(offset - 1, 0, k - 1), axis=1),
        )
        haystack = np.where(in_needle, needle, FILLER[filler_index])  # (N, Q)
        query = np.concatenate(
            [np.full((count, 1), QUERY, dtype=np.int64), DIGIT_0 + passkeys[:, :-1]], axis=1
        )  # (N, k)
        inputs = np.concatenate([haystack, query], axis=1)  # (N, seq_len)
        targets = np.full_like(inputs, IGNORE)
        targets[:, query_at:] = DIGIT_0 + passkeys
        return TokenExamples(inputs, targets, passkeys, setting)
