"""Selective copying (MAD): n content tokens scattered among blanks, then a copy token; the
model must write the content tokens back, in order, while reading blanks.

Vocabulary of V ids: content 0 .. V - 3, blank V - 2, copy V - 1. An example of seq_len
tokens:

- n = num_tokens_to_copy content tokens, uniform (with repetition), in order, with
  seq_len - 2n - 1 blanks among them: each blank goes before a content token chosen
  uniformly (MAD inserts its blanks at indices 0 .. n - 1 of the content, so none falls after
  the last content token);
- the copy token, then n blanks;
- scored: the i-th blank after the copy token has content token i as its target (the copy
  token's own target is not scored), so no answer is ever read as an input.

With V = 6 (content 0-3, blank 4, copy 5), seq_len = 10, n = 2 (5 blanks among the content):

    inputs : 4  1  4  4  4  4  2  5  4  4
    targets: .  .  .  .  .  .  .  .  1  2        (. = IGNORE)

MAD's baseline: V = 16, seq_len 256, n = 16, 12,800 training examples; its variations, one at
a time: V in {32, 64, 128}, seq_len in {512, 1024}, training examples in {6,400, 3,200, 1,600,
800}, n in {32, 64, 96}.
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
class SelectiveCopyingSetting:
    """One length and number of tokens to copy, e.g. `L256_copy16`."""

    seq_len: int
    num_tokens_to_copy: int

    @property
    def name(self) -> str:
        return f"L{self.seq_len}_copy{self.num_tokens_to_copy}"

    @property
    def num_blanks(self) -> int:
        """Blanks among the content tokens, before the copy token."""
        return self.seq_len - 2 * self.num_tokens_to_copy - 1


class SelectiveCopying(TokenTask):
    """Settings `{seq_len: 256, num_tokens_to_copy: 16}`; see the module docstring."""

    teacher_forced_answers: ClassVar[bool] = True  # answers are due at blanks

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < 3:
            raise ConfigError(
                f"data.vocab_size must be >= 3 (content, blank, copy), got {vocab_size}"
            )
        super().__init__(vocab_size)
        self.blank, self.copy = vocab_size - 2, vocab_size - 1

    def setting(self, entry: Mapping[str, Any], key: str) -> SelectiveCopyingSetting:
        fields = entry_fields(entry, key, ("seq_len", "num_tokens_to_copy"))
        n = whole(fields["num_tokens_to_copy"], "num_tokens_to_copy", key, 1)
        setting = SelectiveCopyingSetting(whole(fields["seq_len"], "seq_len", key, 1), n)
        if setting.num_blanks < 1:
            raise ConfigError(
                f"{key}: {n} tokens to copy need seq_len >= {2 * n + 2} (the tokens, a blank, "
                f"the copy token, n answer blanks), got {setting.seq_len}; raise seq_len or "
                "lower num_tokens_to_copy"
            )
        return setting

    def draw(
        self, rng: np.random.Generator, setting: SelectiveCopyingSetting, count: int
    ) -> TokenExamples:
        n, length = setting.num_tokens_to_copy, setting.seq_len
        rows = np.arange(count)[:, None]
        content = rng.integers(0, self.blank, size=(count, n))
        blanks_before = rng.multinomial(setting.num_blanks, np.full(n, 1.0 / n), size=count)
        positions = np.cumsum(blanks_before, axis=1) + np.arange(n)  # (N, n)
        inputs = np.full((count, length), self.blank, dtype=np.int64)
        inputs[rows, positions] = content
        inputs[:, length - n - 1] = self.copy
        targets = np.full((count, length), IGNORE, dtype=np.int64)
        targets[:, length - n :] = content
        return TokenExamples(inputs, targets, content, setting)
