"""Loss against context length: one token stream scored with windows of several lengths.

How windows are cut (the standard sliding-free evaluation of a language model): for every
length L the same span of S targets, tokens[1 : S + 1], is cut into S / L non-overlapping
windows, inputs tokens[iL : iL + L] and targets tokens[iL + 1 : iL + L + 1]. S is the largest
multiple of every length (of their least common multiple) that the stream holds, optionally
capped, so every length scores exactly the same targets and the rows of a table differ only in
the context each target had. The loss is the mean cross-entropy over every target of every
window, all positions included, as the run's own `test/loss` is (a token-weighted mean): a
target at position p of its window sees p earlier tokens, so the loss at L averages contexts
0..L-1. At L = the training length over the whole split these are exactly the test windows
(data/windows.py: every non-overlapping window), and the loss is the run's test loss.

Pure functions on a plain model (no Lightning, no Hydra).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor

from attn_lightning.analysis.plots import new_figure
from attn_lightning.analysis.report import markdown_table
from attn_lightning.data.windows import windows_at
from attn_lightning.errors import ConfigError

Logits = Callable[[Tensor], Tensor]  # idx (B, T) -> logits (B, T, V)


@dataclass(frozen=True)
class LengthResult:
    """The loss of one model at one context length."""

    length: int  # tokens per window (the context length)
    loss: float  # mean cross-entropy, nats per target token
    tokens: int  # targets scored (the same at every length)
    windows: int  # non-overlapping windows: tokens / length
    chars: int  # characters those targets decode to (for bits per character)

    @property
    def ppl(self) -> float:
        return math.exp(self.loss)

    @property
    def bpc(self) -> float:
        """Bits per character: total nats / (ln 2 x characters), as `test/bpc`."""
        return self.loss * self.tokens / (math.log(2) * self.chars)


def common_span(num_tokens: int, lengths: Sequence[int], max_tokens: int | None = None) -> int:
    """S: the targets every length scores, the largest multiple of lcm(lengths) that a stream
    of `num_tokens` tokens holds (S + 1 tokens: inputs and targets), at most `max_tokens`."""
    multiple = math.lcm(*lengths)
    available = num_tokens - 1 if max_tokens is None else min(num_tokens - 1, max_tokens)
    span = available // multiple * multiple
    if span == 0:
        raise ConfigError(
            f"lengths={list(lengths)}: every length must score the same targets, a multiple of "
            f"their least common multiple {multiple}, but the split holds {num_tokens - 1} targets"
            + ("" if max_tokens is None else f" (max_tokens={max_tokens})")
            + ": choose lengths with a smaller common multiple (powers of two) or raise max_tokens"
        )
    return span


def length_windows(tokens: Tensor, length: int, span: int) -> tuple[Tensor, Tensor]:
    """The span's non-overlapping windows of `length`: inputs, targets (span / length, length)."""
    if span % length != 0 or span + 1 > len(tokens):
        raise ValueError(f"span {span} is not a multiple of {length} inside {len(tokens)} tokens")
    starts = torch.arange(0, span, length)
    return windows_at(tokens, starts, length)


@torch.no_grad()
def loss_at_length(
    logits_of: Logits,
    tokens: Tensor,
    length: int,
    span: int,
    token_chars: Tensor,
    batch_tokens: int,
) -> LengthResult:
    """Mean cross-entropy of the span's windows of `length`, `batch_tokens // length` windows
    (at least one) per forward; sums in float64 so the mean does not depend on the batching."""
    inputs, targets = length_windows(tokens, length, span)
    batch = max(1, batch_tokens // length)
    device = token_chars.device
    nats = torch.zeros((), dtype=torch.float64, device=device)
    for first in range(0, len(inputs), batch):
        x = inputs[first : first + batch].to(device)
        y = targets[first : first + batch].to(device)
        logits = logits_of(x).float()  # (B, L, V)
        nats += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").double()
    chars = int(token_chars[targets.flatten().to(device)].sum())
    return LengthResult(length, float(nats) / span, span, len(inputs), chars)


COLUMNS = ("model", "length", "loss", "ppl", "bpc", "tokens", "windows")


def result_rows(results: Mapping[str, Sequence[LengthResult]]) -> list[dict[str, object]]:
    """One row per (model, length): the COLUMNS."""
    return [
        {"model": model, **asdict(r), "ppl": r.ppl, "bpc": r.bpc}
        for model, rows in results.items()
        for r in rows
    ]


def results_csv(results: Mapping[str, Sequence[LengthResult]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(result_rows(results))
    return buffer.getvalue()


def results_markdown(results: Mapping[str, Sequence[LengthResult]]) -> list[str]:
    rows = [
        (
            r["model"],
            r["length"],
            f"{r['loss']:.4f}",
            f"{r['ppl']:.3f}",
            f"{r['bpc']:.4f}",
            f"{r['tokens']:,}",
            r["windows"],
        )
        for r in result_rows(results)
    ]
    return markdown_table(["model", "length", "loss", "ppl", "bpc", "tokens", "windows"], rows)


def loss_against_length(
    results: Mapping[str, Sequence[LengthResult]], training_lengths: Mapping[str, int]
) -> Figure:
    """Loss against context length (log2 axis), one line per model; a dotted vertical line at
    each model's training length (one line, one label, for models that share it)."""
    fig = new_figure(7.0, 4.2)
    ax = fig.subplots()
    lines = {}
    for model, rows in results.items():
        (line,) = ax.plot([r.length for r in rows], [r.loss for r in rows], marker="o", label=model)
        lines[model] = line
    for trained in sorted(set(training_lengths.values())):
        models = [m for m, t in training_lengths.items() if t == trained]
        colour = lines[models[0]].get_color() if len(models) < len(results) else "grey"
        ax.axvline(trained, color=colour, linestyle=":", label=f"trained at {trained}")
    ax.set_xscale("log", base=2)
    lengths = sorted({r.length for rows in results.values() for r in rows})
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.set_xlabel("context length (tokens per window)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Loss against context length (same targets at every length)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
