"""Greedy decoding of synthetic-task answers: what `exact_match` and the task-examples
callback score, the answer as the model produces it on its own rather than teacher forced."""

from __future__ import annotations

import torch
from torch import Tensor

from attn_lightning.data.interface import IGNORE
from attn_lightning.model.gpt import GPT


@torch.no_grad()
def greedy_answers(model: GPT, inputs: Tensor, targets: Tensor) -> Tensor:
    """Answers produced by greedy decoding for a task batch.

    Row b's answer is its kept targets (`targets[b] != IGNORE`, one contiguous run starting at
    position s); its prompt is `inputs[b, : s + 1]`. The model generates as many tokens as the
    reference answer holds (its end token included, so stopping early or late is an error).
    Returns (B, T) with the generated tokens where targets are kept and IGNORE elsewhere:
    compare it with `targets`.
    """
    mask = targets != IGNORE  # (B, T)
    starts, lengths = mask.int().argmax(dim=1), mask.sum(dim=1)  # (B,), (B,)
    produced = torch.full_like(targets, IGNORE)
    for start, length in torch.stack([starts, lengths], 1).unique(dim=0).tolist():
        if length == 0:
            continue
        rows = (starts == start) & (lengths == length)
        out = model.generate(inputs[rows, : start + 1], length, temperature=0)
        produced[rows, start : start + length] = out[:, start + 1 :]
    return produced


def exact_matches(produced: Tensor, targets: Tensor) -> Tensor:
    """(B,) bool: every kept target of the row reproduced."""
    return ((produced == targets) | (targets == IGNORE)).all(dim=1)
