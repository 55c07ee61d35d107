"""The timing row of `python -m attn_lightning.check`: forward+backward of one attention module
(or any sequence mixer, through analysis/mixer_contract.py's `mixer_factory`) at a few lengths,
with the attention benchmark's shape, repeats and timer, and the fitted log-log exponent
(time ~ T^k). The correctness checks live in analysis/contract.py and mixer_contract.py."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attn_lightning.analysis.contract import TIMING, CheckResult, error_result
from attn_lightning.analysis.scaling import scaling_exponent
from attn_lightning.bench.attention.settings import Settings
from attn_lightning.bench.attention.timing import MeasurementTimeout, time_calls


@dataclass(frozen=True)
class TimingSizes:
    """The timing check: the attention benchmark's shape and repeats (bench/attention/
    settings.py), forward+backward of the whole module at each length."""

    lengths: tuple[int, ...] = (256, 512, 1024)
    batch_size: int = Settings.batch_size
    n_head: int = Settings.heads
    head_dim: int = Settings.head_dim
    warmup: int = Settings.warmup
    repeats: int = Settings.repeats
    time_limit: float = Settings.time_limit  # seconds per length, warm-up included
    seed: int = 0


# (n_embd=, n_head=, block_size=) -> a module whose forward returns (y, ...)
ModuleFactory = Callable[..., nn.Module]


def check_timing(factory: ModuleFactory, timing: TimingSizes) -> CheckResult:
    """The timing row; a module that raises gives a failed row carrying the error."""
    try:
        return measure_timing(factory, timing)
    except Exception as error:  # a broken method is a failed check, as in the contract
        return error_result(TIMING, error)


def measure_timing(factory: ModuleFactory, timing: TimingSizes) -> CheckResult:
    """Median forward+backward of the module at each length (the attention benchmark's
    `time_calls`) and the log-log exponent (analysis/scaling.py's fit)."""
    lengths = sorted(set(timing.lengths))
    torch.manual_seed(timing.seed)
    n_embd = timing.n_head * timing.head_dim
    module = factory(n_embd=n_embd, n_head=timing.n_head, block_size=lengths[-1]).train()
    generator = torch.Generator().manual_seed(timing.seed)
    medians = []
    for length in lengths:
        x = torch.randn(timing.batch_size, length, n_embd, generator=generator, requires_grad=True)
        grad = torch.randn(timing.batch_size, length, n_embd, generator=generator)

        def call(x: Tensor = x, grad: Tensor = grad) -> None:
            module.zero_grad(set_to_none=True)
            x.grad = None
            module(x)[0].backward(grad)

        try:
            seconds = time_calls(
                call, timing.warmup, timing.repeats, timing.time_limit, torch.device("cpu")
            )
        except MeasurementTimeout as error:
            return CheckResult(TIMING, False, f"T={length}: timed out ({error})", position=length)
        medians.append(1000 * statistics.median(seconds))
    exponent = scaling_exponent(lengths, medians)
    times = " / ".join(f"{ms:.3g}" for ms in medians)
    fitted = "n/a" if exponent is None or not math.isfinite(exponent) else f"{exponent:.2f}"
    return CheckResult(
        TIMING,
        True,
        f"fwd+bwd {times} ms at T={'/'.join(map(str, lengths))}; time ~ T^{fitted}",
        values={"lengths": lengths, "time_ms": medians, "exponent": exponent},
    )
