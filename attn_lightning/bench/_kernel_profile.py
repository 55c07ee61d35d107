"""Where a core's time goes, and how far it is from the machine's matmul limit
(`bench kernels --profile`).

One forward + backward of each core runs under `torch.profiler` (the self time of every op,
grouped: matmuls, copies and layout changes, other tensor ops; what the profiler cannot place
on an op is Python, autograd and dispatch) and once under `FlopCounterMode` (its matmul FLOPs).
The limit is that work at the matmul rate measured in the same run: one large square product
(the machine's peak) and a batch of chunk-sized ones (what a chunked kernel can hope for).

`FlopCounterMode` counts `baddbmm` but neither the in-place `baddbmm_`/`addmm_` the chunked
kernels use nor the delta rule's triangular solve, so those are registered here. SDPA is not
profiled: its CPU kernel is one fused op, neither a matmul to the profiler nor counted.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from attn_lightning.bench.attention.timing import time_calls

MATMUL_OPS = frozenset(
    "aten::" + name
    for name in ("mm", "bmm", "addmm", "addmm_", "baddbmm", "baddbmm_", "linalg_solve_triangular")
)
LAYOUT_OPS = frozenset(
    "aten::" + name
    for name in ("copy_", "cat", "stack", "constant_pad_nd", "clone", "fill_", "zero_", "_to_copy")
)


def _baddbmm_flops(_self: Sequence[int], a: Sequence[int], b: Sequence[int], *_: object, **__):
    return 2 * a[0] * a[1] * a[2] * b[2]


def _addmm_flops(_self: Sequence[int], a: Sequence[int], b: Sequence[int], *_: object, **__):
    return 2 * a[0] * a[1] * b[1]


def _solve_triangular_flops(a: Sequence[int], b: Sequence[int], *_: object, **__):
    """Substitution with an (n x n) triangle: n² FLOPs per right-hand-side column."""
    batch = 1
    for size in a[:-2]:
        batch *= size
    return batch * a[-1] ** 2 * b[-1]


UNCOUNTED_MATMULS = {
    torch.ops.aten.baddbmm_: _baddbmm_flops,
    torch.ops.aten.addmm_: _addmm_flops,
    torch.ops.aten.linalg_solve_triangular: _solve_triangular_flops,
}


@dataclass
class Breakdown:
    """One call's profile: milliseconds per group and its matmul GFLOP."""

    matmul_ms: float
    layout_ms: float
    other_ops_ms: float
    framework_ms: float
    gflop: float

    @property
    def total_ms(self) -> float:
        return self.matmul_ms + self.layout_ms + self.other_ops_ms + self.framework_ms


def profile_call(call: Callable[[], None]) -> Breakdown:
    """Self times of one call's ops, grouped (module docstring), and its matmul FLOPs."""
    with FlopCounterMode(display=False, custom_mapping=UNCOUNTED_MATMULS) as counter:
        call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    ms = {"matmul": 0.0, "layout": 0.0, "other": 0.0, "framework": 0.0}
    for event in prof.key_averages():
        self_ms = event.self_cpu_time_total / 1000
        if event.key in MATMUL_OPS:
            ms["matmul"] += self_ms
        elif event.key in LAYOUT_OPS:
            ms["layout"] += self_ms
        elif event.key.startswith("aten::"):
            ms["other"] += self_ms
        else:  # autograd nodes, Function bodies in Python, the engine
            ms["framework"] += self_ms
    return Breakdown(
        ms["matmul"], ms["layout"], ms["other"], ms["framework"], counter.get_total_flops() / 1e9
    )


def matmul_rates(chunk_size: int, head_dim: int, repeats: int = 5) -> tuple[float, float]:
    """GFLOP/s of a 1024 x 1024 x 1024 product and of 2048 chunk-sized (C x d)(d x C) ones."""

    def rate(a: torch.Tensor, b: torch.Tensor, flop: float) -> float:
        product = torch.bmm if a.dim() == 3 else torch.mm
        seconds = time_calls(lambda: product(a, b), 1, repeats, math.inf, a.device)
        return flop / statistics.median(seconds) / 1e9

    square = torch.randn(1024, 1024)
    q, k = torch.randn(2048, chunk_size, head_dim), torch.randn(2048, head_dim, chunk_size)
    return (
        rate(square, square, 2 * 1024**3),
        rate(q, k, 2 * 2048 * chunk_size * chunk_size * head_dim),
    )


def breakdown_table(
    rows: Sequence[tuple[str, float, Breakdown]], peak: float, chunked: float
) -> str:
    """Markdown: per core its raced ms, the profile's shares, its matmul work and the time that
    work takes at the peak and at the chunk-sized rate."""
    lines = [
        "| core | ms | matmul | copies, pads | other ops | Python, autograd | "
        "matmul GFLOP | achieved GFLOP/s | limit at peak (ms) | limit at chunk rate (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, ms, b in rows:
        matmul, layout, other, framework = (
            f"{100 * part / b.total_ms:.0f}%"
            for part in (b.matmul_ms, b.layout_ms, b.other_ops_ms, b.framework_ms)
        )
        lines.append(
            f"| {label} | {ms:,.1f} | {matmul} | {layout} | {other} | {framework} | "
            f"{b.gflop:.2f} | {1000 * b.gflop / ms:.0f} | {1000 * b.gflop / peak:.1f} | "
            f"{1000 * b.gflop / chunked:.1f} |"
        )
    return "\n".join(lines)
