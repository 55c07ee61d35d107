"""In-context recall (MAD, multi-query form): key-value pairs whose binding changes from one
example to the next; every value whose key was shown earlier in the example is an answer.

Vocabulary of V ids: keys 0 .. V/2 - 1, values V/2 .. V - 1 (MAD's multi-query layout: no
special token). The stream (recall.py): seq_len / 2 - 1 pairs, keys uniform, each key bound to
a uniform value per example, then a probe pair re-asking a presented key. Scored: the value of
each repeated key and of the probe, at the key's position. With V = 16, seq_len = 10:

    inputs : 3 12  5  9  3 12  0 14  5  9
    targets: .  .  .  .  12 .  .  .  9  .        (. = IGNORE; the last pair is the probe)

MAD's baseline: V = 16, seq_len 128, 12,800 training examples, 1,280 test examples; its
variations, one at a time: V in {32, 64, 128}, seq_len in {256, 512, 1024}, training examples
in {6,400, 3,200, 1,600, 800}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from attn_lightning.data.token_tasks.mad.entries import entry_fields, whole
from attn_lightning.data.token_tasks.mad.recall import RecallSetting, draw_recall_stream
from attn_lightning.data.token_tasks.task import TokenExamples, TokenTask
from attn_lightning.errors import ConfigError


class InContextRecall(TokenTask):
    """Settings `{seq_len: 128}`; see the module docstring."""

    teacher_forced_answers: ClassVar[bool] = True  # each answer is one token, due on its own

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < 2:
            raise ConfigError(f"data.vocab_size must be >= 2 (keys, values), got {vocab_size}")
        super().__init__(vocab_size)
        self.num_keys = vocab_size // 2

    def setting(self, entry: Mapping[str, Any], key: str) -> RecallSetting:
        fields = entry_fields(entry, key, ("seq_len",))
        setting = RecallSetting(whole(fields["seq_len"], "seq_len", key, 1))
        setting.check(key)
        return setting

    def draw(self, rng: np.random.Generator, setting: RecallSetting, count: int) -> TokenExamples:
        inputs, targets = draw_recall_stream(
            rng,
            count,
            setting.seq_len,
            num_keys=self.num_keys,
            num_values=self.vocab_size - self.num_keys,
            noise_ids=(self.vocab_size, self.vocab_size),
            frac_noise=0.0,
        )
        return TokenExamples(inputs, targets, inputs, setting)
