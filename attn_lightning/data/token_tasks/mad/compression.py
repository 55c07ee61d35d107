"""Compression (MAD), in a causal form: read random tokens, then a compression token, and
write the tokens back in order.

MAD's form: x_1 .. x_{L-1} (uniform over ids 0 .. V - 2) and the compression token V - 1,
read by an encoder whose last position's output, one vector, is the whole code; a decoder (a
position-wise MLP given that vector and a position embedding) must give back all L tokens.
Softmax attention and fixed-state mixers alike are held to that one vector.

A causal GPT has no such bottleneck: any position that writes the tokens back can also
attend to them. The honest causal form kept here is the reconstruction itself: after the
compression token the model reads the compression token again, once per token to write back,
and writes x_1 .. x_{L-1} in order. A fixed-state mixer must hold the whole sequence in its
state (the compression MAD measures); softmax attention can read the tokens back from its
cache, so for it this is copying, not compression. MAD's bottleneck for attention would need
an autoencoder readout in the model, which this task does not add. The compression token's
own reconstruction (MAD scores it; it is always right) is not scored.

Vocabulary of V ids: content 0 .. V - 2, compression V - 1. An example of num_tokens
(= L - 1) content tokens is 2 * num_tokens tokens; the target after the i-th compression
token is x_i. With V = 5, num_tokens = 3:

    inputs : 2  0  3  4  4  4
    targets: .  .  .  2  0  3        (. = IGNORE)

MAD's baseline: V = 16, L = 32 (num_tokens 31), 12,800 training examples; its variations, one
at a time: V in {32, 64, 128}, L in {64, 128, 256} (num_tokens 63, 127, 255), training
examples in {6,400, 3,200, 1,600, 800}.
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
class CompressionSetting:
    """One number of tokens to compress, e.g. `T31` (MAD's seq_len 32)."""

    num_tokens: int

    @property
    def name(self) -> str:
        return f"T{self.num_tokens}"

    @property
    def seq_len(self) -> int:
        return 2 * self.num_tokens


class Compression(TokenTask):
    """Settings `{num_tokens: 31}`; see the module docstring."""

    teacher_forced_answers: ClassVar[bool] = True  # answers are due at compression tokens

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < 2:
            raise ConfigError(
                f"data.vocab_size must be >= 2 (content, compression), got {vocab_size}"
            )
        super().__init__(vocab_size)
        self.compress = vocab_size - 1

    def setting(self, entry: Mapping[str, Any], key: str) -> CompressionSetting:
        fields = entry_fields(entry, key, ("num_tokens",))
        return CompressionSetting(whole(fields["num_tokens"], "num_tokens", key, 1))

    def draw(
        self, rng: np.random.Generator, setting: CompressionSetting, count: int
    ) -> TokenExamples:
        n = setting.num_tokens
        content = rng.integers(0, self.compress, size=(count, n))
        inputs = np.full((count, 2 * n), self.compress, dtype=np.int64)
        inputs[:, :n] = content
        targets = np.full((count, 2 * n), IGNORE, dtype=np.int64)
        targets[:, n:] = content
        return TokenExamples(inputs, targets, content, setting)
