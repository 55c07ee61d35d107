"""Evaluation metrics of one stage (`val`, `test`, `test_long`), as torchmetrics objects so that
Lightning accumulates them over batches and reduces them across DDP ranks.

Per token: `loss` and `ppl`; per character: `bpc` (so character and BPE models compare); on
synthetic tasks: `answer_token_acc` (teacher forced, the share of answer tokens right),
`answer_macro_acc` (teacher forced, the recall of each answer class averaged over classes:
MAD's accuracy, torchmetrics' macro average as its code uses it) and `exact_match` (the whole
answer right under greedy decoding). torchmetrics has no bits-per-character metric (its
Perplexity is per token), hence `BitsPerCharacter`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import Perplexity

from attn_lightning.data.interface import IGNORE

LM_METRICS = ("loss", "ppl", "bpc")
ANSWER_METRICS = ("answer_token_acc", "answer_macro_acc", "exact_match")  # synthetic tasks only
METRICS = LM_METRICS + ANSWER_METRICS  # logged as `<stage>/<name>`


class BitsPerCharacter(Metric):
    """Total nats over the targets / (ln 2 * characters those targets decode to)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nats", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("chars", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, total_nats: Tensor, num_chars: Tensor) -> None:
        self.nats += total_nats.detach().float()
        self.chars += num_chars.float()

    def compute(self) -> Tensor:
        return self.nats / (math.log(2) * self.chars)


class StageMetrics(nn.Module):
    """The metrics of one evaluation stage; `token_chars[i]` = characters token i decodes to."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.loss = MeanMetric()
        self.ppl = Perplexity(ignore_index=IGNORE)
        self.bpc = BitsPerCharacter()
        self.answer_token_acc = MulticlassAccuracy(vocab_size, average="micro", ignore_index=IGNORE)
        self.answer_macro_acc = MulticlassAccuracy(vocab_size, average="macro", ignore_index=IGNORE)
        self.exact_match = MeanMetric()

    def update_language_model(
        self, loss: Tensor, logits: Tensor, targets: Tensor, token_chars: Tensor
    ) -> None:
        """loss: mean over the kept targets; logits (B, T, V); targets (B, T)."""
        kept = targets != IGNORE
        num_targets = kept.sum()
        self.loss.update(loss, weight=num_targets)
        self.ppl.update(logits.float(), targets)
        self.bpc.update(loss * num_targets, token_chars[targets[kept]].sum())

    def update_answers(self, logits: Tensor, targets: Tensor, exact: Tensor) -> None:
        """exact: (B,) whether greedy decoding reproduced each row's whole answer."""
        predicted = logits.argmax(-1)
        self.answer_token_acc.update(predicted, targets)
        self.answer_macro_acc.update(predicted, targets)
        self.exact_match.update(exact.float())

    def named(self, answers: bool) -> dict[str, Metric]:
        """{name: metric} to log: the language-model metrics, and the answer ones on tasks."""
        names = METRICS if answers else LM_METRICS
        return {name: getattr(self, name) for name in names}
