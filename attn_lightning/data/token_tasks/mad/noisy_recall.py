"""Noisy in-context recall (MAD): in-context recall where each pair slot is, with probability
`frac_noise`, two tokens of a separate noise vocabulary instead; the model must skip them.

Vocabulary of V ids with N noise ids: keys 0 .. (V-N)/2 - 1, values (V-N)/2 .. V-N-1, noise
V-N .. V-1. The stream is in-context recall's (recall.py) with noise slots; noise is never
scored and never the probe, and one pair of each example is never noise. With V = 8, N = 4,
seq_len = 10 (keys 0-1, values 2-3, noise 4-7):

    inputs : 1  3  6  4  1  3  0  2  1  3
    targets: .  .  .  .  3  .  .  .  3  .        (. = IGNORE; the second slot is noise)

MAD's baseline: V = 32 with N = 16, frac_noise 0.2, seq_len 128, 12,800 training examples;
its variations, one at a time: V in {48, 80, 144} (N stays 16), seq_len in {256, 512, 1024},
training examples in {6,400, 3,200, 1,600, 800}, frac_noise in {0.4, 0.6, 0.8}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from attn_lightning.data.token_tasks.mad.entries import entry_fields, whole
from attn_lightning.data.token_tasks.mad.recall import RecallSetting, draw_recall_stream
from attn_lightning.data.token_tasks.task import TokenExamples, TokenTask
from attn_lightning.errors import ConfigError


class NoisyRecall(TokenTask):
    """Settings `{seq_len: 128, frac_noise: 0.2}`; see the module docstring."""

    teacher_forced_answers: ClassVar[bool] = True  # each answer is one token, due on its own

    def __init__(self, vocab_size: int, noise_vocab_size: int = 16) -> None:
        if noise_vocab_size < 1 or vocab_size - noise_vocab_size < 2:
            raise ConfigError(
                f"data.task.noise_vocab_size must be >= 1 and leave >= 2 ids of data.vocab_size "
                f"for keys and values, got {noise_vocab_size} of {vocab_size}"
            )
        super().__init__(vocab_size)
        self.noise_vocab_size = noise_vocab_size
        self.num_keys = (vocab_size - noise_vocab_size) // 2

    def setting(self, entry: Mapping[str, Any], key: str) -> RecallSetting:
        fields = entry_fields(entry, key, ("seq_len", "frac_noise"))
        frac_noise = fields["frac_noise"]
        if isinstance(frac_noise, bool) or not isinstance(frac_noise, int | float):
            raise ConfigError(f"{key}.frac_noise must be a number in [0, 1), got {frac_noise!r}")
        setting = RecallSetting(whole(fields["seq_len"], "seq_len", key, 1), float(frac_noise))
        setting.check(key)
        return setting

    def draw(self, rng: np.random.Generator, setting: RecallSetting, count: int) -> TokenExamples:
        signal = self.vocab_size - self.noise_vocab_size
        inputs, targets = draw_recall_stream(
            rng,
            count,
            setting.seq_len,
            num_keys=self.num_keys,
            num_values=signal - self.num_keys,
            noise_ids=(signal, self.vocab_size),
            frac_noise=setting.frac_noise,
        )
        return TokenExamples(inputs, targets, inputs, setting)
