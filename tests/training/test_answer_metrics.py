"""The answer accuracies on hand-made cases: micro (ours) and macro (MAD's)."""

from __future__ import annotations

import torch

from attn_lightning.data.interface import IGNORE
from attn_lightning.training.metrics import StageMetrics


def accuracies(predicted: list[int], targets: list[int]) -> tuple[float, float]:
    metrics = StageMetrics(vocab_size=6)
    logits = torch.nn.functional.one_hot(torch.tensor([predicted]), 6).float()  # (1, T, V)
    metrics.update_answers(logits, torch.tensor([targets]), torch.tensor([False]))
    return float(metrics.answer_token_acc.compute()), float(metrics.answer_macro_acc.compute())


def test_micro_counts_tokens_and_macro_averages_the_recall_of_each_class() -> None:
    # answers a a a b (ids 2, 2, 2, 3), all predicted a; an ignored position predicted 5
    micro, macro = accuracies([2, 2, 2, 2, 5], [2, 2, 2, 3, IGNORE])
    assert micro == 3 / 4  # 3 of 4 answer tokens
    assert macro == (1.0 + 0.0) / 2  # recall of a = 1, of b = 0


def test_macro_counts_a_class_only_predicted_as_zero() -> None:
    # answers a a (id 2); one predicted c (id 4): classes a (recall 1/2) and c (never a target)
    micro, macro = accuracies([2, 4], [2, 2])
    assert micro == 1 / 2
    assert macro == (0.5 + 0.0) / 2
