"""Attention cores against sequence length: forward+backward time, peak memory, and how close
each variant's output and attention matrix are to exact causal softmax on the same q, k, v.

    python -m attn_lightning.bench attention [--variants vanilla,linear,performer]
        [--lengths 128,256,512 | --min-length 128 --max-length 8192]
        [--batch-size 1] [--heads 4] [--head-dim 32] [--repeats 5] [--warmup 1]
        [--device auto] [--dtype float32] [--time-limit 30] [--max-memory GIB]
        [--matrix-limit 64] [--set performer.nb_features=256] [--seed 0] [--output-dir DIR]

Defaults: every conf/attention/*.yaml with its own hyperparameters (`--set variant.key=value`
changes one); lengths 128, 256, ... up to 8192 on CPU and 32768 on GPU; batch 1, 4 heads of
dimension 32; 1 warm-up call then the median of 5; device cuda when available; float32;
30 s per measurement; a CPU memory budget of half the available RAM; attention matrices
compared while B*H*T*T float32 values fit in 64 MiB; output in
outputs/bench/attention/<timestamp>/ (results.csv, results.md, time.png, memory.png).

What is timed: the core, `CausalSelfAttention.core`, everything a variant's forward does
between the q/k/v projection and the output projection: RoPE where the variant applies it,
repeating k/v heads (grouped-query), and `attend(q, k, v)`; a call is its forward and the
backward to q, k, v and the core's own parameters (the causal Linformer's compressions).
The projections are the same matmuls for every variant and would only dilute the difference.
Each module is built with block_size = T, so the
segment variants (linformer, nystrom) keep their configured number of segments, whose length
grows with T: with the default 8 segments their cost is quadratic, about T^2/8.

Memory: peak bytes allocated during one more call, above what existed before it (the inputs).
GPU: torch.cuda.max_memory_allocated. CPU: a ledger of the storages that operators return,
kept by a dispatch mode (live bytes, their peak): it counts tensors (activations saved for the
backward, outputs, gradients) but not scratch buffers a kernel allocates and frees inside
itself, nor allocator overhead; RSS would measure glibc's reuse of freed pages instead.

Quality: the mean over query rows of the cosine similarity between the variant's output
(and attention matrix) and exact causal softmax in float32 on the same inputs the core sees
(after RoPE). Vanilla, GQA/MQA and rotary are exact (1.0); the kernel variants (linear,
performer) compute a different function, and the local/sparse ones drop keys.

Failures: a measurement (warm-up and repeats) that runs past --time-limit is `timeout`; a call
already running is not interrupted, so one can overshoot by its own duration. An out-of-memory
error is `oom`. On CPU the kernel may kill the process instead of raising, so a length whose
predicted peak (extrapolated from the variant's previous lengths, or 3 score matrices before
the first) exceeds --max-memory is refused as `oom (estimated)`. After a timeout or an oom the
variant's longer lengths are `skipped`; any other exception is recorded as `error: ...` and
the next length is tried.

Fits: the scaling exponent is the least-squares slope of log(time) and log(memory) against
log(T) over the upper half of the lengths that ran (all of them when fewer than 4): fixed
per-call overheads flatten the short end. The crossover is the first length from which a
variant stays faster than vanilla in this run.
"""

from __future__ import annotations

import argparse
import csv
import gc
import io
import math
import os
import statistics
import sys
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from attn_lightning.analysis.plots import save_png
from attn_lightning.analysis.report import markdown_table
from attn_lightning.analysis.scaling import (
    crossover_length,
    fit_points,
    scaling_exponent,
    scaling_figure,
)
from attn_lightning.analysis.stats import exact_softmax
from attn_lightning.atomic import write_text
from attn_lightning.attention.base import CausalSelfAttention
from attn_lightning.errors import UserError, exit_on_user_error
from attn_lightning.variants import build_attention, variant_names, variant_options

MiB = 2**20
GiB = 2**30
BASELINE = "vanilla"  # the exact variant the crossover is measured against
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MIN_LENGTH = 128
MAX_LENGTH = {"cpu": 8192, "cuda": 32768}
CPU_MEMORY_FRACTION = 0.5  # of MemAvailable: headroom for the estimate's error and the system
CSV_COLUMNS = (
    "variant",
    "length",
    "status",
    "time_ms",
    "memory_mib",
    "output_cosine",
    "matrix_cosine",
    "batch_size",
    "heads",
    "head_dim",
    "dtype",
    "device",
)


@dataclass(frozen=True)
class Settings:
    """One sweep: which cores, which lengths, what shapes, and the limits of a measurement."""

    variants: tuple[str, ...]
    lengths: tuple[int, ...]
    batch_size: int = 1
    heads: int = 4
    head_dim: int = 32
    repeats: int = 5
    warmup: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    time_limit: float = 30.0  # seconds per (variant, length): warm-up and repeats
    max_memory: float | None = None  # bytes a call may need; None: no estimate, rely on errors
    matrix_limit: float = 64 * MiB  # B*H*T*T float32 bytes up to which matrices are compared
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per-variant keys
    seed: int = 0

    def validate(self) -> None:
        """Raise UserError saying what to change, before any measurement starts."""
        valid = variant_names()
        unknown = [v for v in self.variants if v not in valid]
        if unknown or not self.variants:
            raise UserError(
                f"unknown attention variant(s) {', '.join(unknown) or '(none given)'}: "
                f"choose from {', '.join(valid)}"
            )
        if not self.lengths or any(n <= 0 for n in self.lengths):
            raise UserError(f"sequence lengths must be positive integers, got {list(self.lengths)}")
        for name in ("batch_size", "heads", "head_dim", "repeats"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        if self.warmup < 0 or self.time_limit < 0:
            raise UserError("--warmup and --time-limit must be >= 0")
        if self.dtype not in DTYPES:
            raise UserError(f"unknown --dtype {self.dtype}: choose from {', '.join(DTYPES)}")
        for variant, options in self.options.items():
            if variant not in valid:
                raise UserError(
                    f"--set names unknown variant {variant}: choose from {', '.join(valid)}"
                )
            keys = list(variant_options(variant))
            for key in options:
                if key not in keys:
                    raise UserError(
                        f"--set {variant}.{key}: {variant} has no option {key}; "
                        f"its options are {', '.join(keys)}"
                    )


@dataclass
class Measurement:
    """One (variant, length): status ok / timeout / oom / oom (estimated) / skipped /
    error: <message>; the figures are NaN where they were not measured."""

    variant: str
    length: int
    status: str
    time_ms: float = math.nan  # median forward+backward
    memory_mib: float = math.nan  # peak allocated during a call, inputs excluded
    output_cosine: float = math.nan
    matrix_cosine: float = math.nan

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class MeasurementTimeout(Exception):
    """The measurement ran past its time limit."""


class StorageLedger(TorchDispatchMode):
    """Live and peak bytes of the storages operators allocate while the mode is on.

    An output storage that is not among the operator's inputs is new memory (views and
    in-place results share an input's storage); a weak-reference finaliser takes it off the
    books when the storage is freed. Tensors that existed before are never counted."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: weakref.WeakSet = weakref.WeakSet()

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in _tensors((args, kwargs))}
        for tensor in _tensors(out):
            storage = tensor.untyped_storage()
            if id(storage) in inputs or storage in self._seen:
                continue
            self._seen.add(storage)
            self.live += storage.nbytes()
            weakref.finalize(storage, self._free, storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


def _tensors(tree: Any) -> list[Tensor]:
    """The tensors in nested tuples/lists/dicts of operator arguments or results."""
    if isinstance(tree, Tensor):
        return [tree]
    if isinstance(tree, (tuple, list)):
        return [t for item in tree for t in _tensors(item)]
    if isinstance(tree, dict):
        return [t for item in tree.values() for t in _tensors(item)]
    return []


def build_variant(name: str, settings: Settings, length: int) -> CausalSelfAttention:
    """The variant's module at block_size = length, seeded (Performer's features, Linformer's
    compressions), on the benchmark's device and dtype."""
    torch.manual_seed(settings.seed)
    module = build_attention(
        name,
        n_embd=settings.heads * settings.head_dim,
        n_head=settings.heads,
        block_size=length,
        **settings.options.get(name, {}),
    )
    return module.to(device=settings.device, dtype=DTYPES[settings.dtype]).train()


def random_inputs(settings: Settings, length: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """q, k, v and the output gradient, (B, H, T, D) standard normal, the same for every
    variant at this length and on every device (drawn on the CPU)."""
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + length)
    shape = (settings.batch_size, settings.heads, length, settings.head_dim)
    dtype = DTYPES[settings.dtype]
    return tuple(
        torch.randn(shape, generator=generator).to(settings.device, dtype) for _ in range(4)
    )  # type: ignore[return-value]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    call: Callable[[], None], warmup: int, repeats: int, limit: float, device: torch.device
) -> list[float]:
    """Seconds of each of `repeats` calls after `warmup` untimed ones; MeasurementTimeout as
    soon as the calls so far took longer than `limit` seconds."""
    start = time.perf_counter()
    seconds = []
    for i in range(warmup + repeats):
        _sync(device)
        begin = time.perf_counter()
        call()
        _sync(device)
        end = time.perf_counter()
        if i >= warmup:
            seconds.append(end - begin)
        if end - start > limit:
            raise MeasurementTimeout(f"{end - start:.3g} s after {i + 1} calls > {limit:g} s")
    return seconds


def peak_memory(call: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated during one call beyond what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with StorageLedger() as ledger:
        call()
    return ledger.peak


def row_cosine(a: Tensor, b: Tensor) -> float:
    """Mean over rows (the last dim is a row) of the cosine similarity, in float32 or wider."""
    return float(F.cosine_similarity(a.float(), b.float(), dim=-1).mean())


@torch.no_grad()
def quality(
    module: CausalSelfAttention, q: Tensor, k: Tensor, v: Tensor, matrix_limit: float
) -> tuple[float, float]:
    """Cosine of the output and of the attention matrix to exact causal softmax on the same
    core inputs (matrix NaN when B*H*T*T float32 values exceed matrix_limit bytes)."""
    out = module.core(q, k, v)
    q, k, v = module.core_inputs(q, k, v)  # what the core saw: RoPE, heads repeated
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    output_cosine = row_cosine(out, exact)
    B, H, T, _ = q.shape
    matrix_bytes = B * H * T * T * 4  # float32
    if matrix_bytes > matrix_limit:
        return output_cosine, math.nan
    return output_cosine, row_cosine(module.attention_matrix(q, k), exact_softmax(q, k))


def estimate_peak(history: Sequence[tuple[int, int]], length: int, settings: Settings) -> float:
    """Bytes a call at `length` should need: its inputs and gradients, plus the peak measured
    at the variant's last length extrapolated with the local exponent of its last two (clamped
    to 1..2, 2 from a single point); before any measurement, 3 score matrices (scores,
    weights, their gradient) as if the variant materialised them."""
    itemsize = DTYPES[settings.dtype].itemsize
    rows = settings.batch_size * settings.heads * length
    inputs = 8 * rows * settings.head_dim * itemsize  # q, k, v, output and their gradients
    if not history:
        return inputs + 3 * rows * length * itemsize
    n1, m1 = history[-1]
    exponent = 2.0
    if len(history) >= 2:
        n0, m0 = history[-2]
        exponent = min(2.0, max(1.0, math.log(max(m1, 1) / max(m0, 1)) / math.log(n1 / n0)))
    return inputs + max(m1, 1) * (length / n1) ** exponent


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "out of memory" in message or "can't allocate memory" in message
    )


def measure(
    name: str,
    length: int,
    inputs: tuple[Tensor, Tensor, Tensor, Tensor],
    settings: Settings,
    history: list[tuple[int, int]],
    log: Callable[[str], None],
) -> Measurement:
    """One variant at one length; a failure becomes the measurement's status."""
    device = torch.device(settings.device)
    if settings.max_memory is not None:
        need = estimate_peak(history, length, settings)
        if need > settings.max_memory:
            log(
                f"{name} T={length}: needs ~{need / GiB:.2f} GiB (estimated) > "
                f"budget {settings.max_memory / GiB:.2f} GiB"
            )
            return Measurement(name, length, "oom (estimated)")
    try:
        module = build_variant(name, settings, length)
        q, k, v, grad = inputs
        n_kv = module.n_kv_head  # grouped-query variants get fewer k/v heads
        leaves = [
            q.detach().requires_grad_(),
            k[:, :n_kv].contiguous().requires_grad_(),
            v[:, :n_kv].contiguous().requires_grad_(),
        ]
        tensors_with_grad = [*leaves, *module.parameters()]

        def clear_grads() -> None:
            for tensor in tensors_with_grad:
                tensor.grad = None

        def call() -> None:
            clear_grads()
            module.core(*leaves).backward(grad)

        seconds = time_calls(call, settings.warmup, settings.repeats, settings.time_limit, device)
        clear_grads()
        peak = peak_memory(call, device)
        clear_grads()
        output_cosine, matrix_cosine = quality(module, *leaves, settings.matrix_limit)
    except MeasurementTimeout as error:
        log(f"{name} T={length}: timeout ({error})")
        return Measurement(name, length, "timeout")
    except Exception as error:  # a failing variant is a result; the sweep goes on
        status = "oom" if _is_oom(error) else f"error: {type(error).__name__}: {error}"
        status = (status.splitlines() or [status])[0][:300]  # one line in a CSV cell
        log(f"{name} T={length}: {status}")
        return Measurement(name, length, status)
    finally:
        gc.collect()  # tensors of a failed call may still sit in a traceback's frames
        if device.type == "cuda":
            torch.cuda.empty_cache()
    history.append((length, peak))
    return Measurement(
        name,
        length,
        "ok",
        time_ms=1000 * statistics.median(seconds),
        memory_mib=peak / MiB,
        output_cosine=output_cosine,
        matrix_cosine=matrix_cosine,
    )


def run(settings: Settings, log: Callable[[str], None] = lambda line: None) -> list[Measurement]:
    """Every variant at every length, shortest length first and variants interleaved, so
    that machine drift hits all alike; after a timeout or oom a variant's longer lengths are
    skipped."""
    settings.validate()
    stopped: set[str] = set()
    history: dict[str, list[tuple[int, int]]] = {name: [] for name in settings.variants}
    results = []
    for length in sorted(set(settings.lengths)):
        inputs = random_inputs(settings, length)
        for name in settings.variants:
            if name in stopped:
                results.append(Measurement(name, length, "skipped"))
                continue
            result = measure(name, length, inputs, settings, history[name], log)
            if result.status in ("timeout", "oom", "oom (estimated)"):
                stopped.add(name)
            elif result.ok:
                log(
                    f"{name} T={length}: {result.time_ms:.3g} ms, {result.memory_mib:.3g} MiB, "
                    f"cosine {result.output_cosine:.4f}"
                )
            results.append(result)
        del inputs
    return results


def _series(results: Sequence[Measurement], name: str, metric: str) -> tuple[list[int], list]:
    rows = [r for r in results if r.variant == name]
    return [r.length for r in rows], [getattr(r, metric) if r.ok else math.nan for r in rows]


def summary(results: Sequence[Measurement], variants: Sequence[str]) -> dict[str, dict]:
    """Per variant: time and memory exponents with the lengths they were fitted on, and the
    crossover length against vanilla (absent when vanilla was not run)."""
    out: dict[str, dict] = {}
    base = [r for r in results if r.variant == BASELINE]
    for name in variants:
        entry: dict[str, Any] = {}
        for metric in ("time_ms", "memory_mib"):
            lengths, values = _series(results, name, metric)
            entry[f"{metric}_exponent"] = scaling_exponent(lengths, values)
            entry[f"{metric}_fit_lengths"] = [n for n, _ in fit_points(lengths, values)]
        if base and name != BASELINE:
            rows = {r.length: r for r in results if r.variant == name}
            common = [r.length for r in base if r.length in rows]
            entry["crossover"] = crossover_length(
                common,
                [rows[n].time_ms if rows[n].ok else None for n in common],
                [r.time_ms if r.ok else None for r in base if r.length in rows],
            )
        out[name] = entry
    return out


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _cell(result: Measurement, text: Callable[[Measurement], str]) -> str:
    return text(result) if result.ok else result.status.split(":")[0]


def render_markdown(settings: Settings, results: Sequence[Measurement]) -> str:
    """Tables of time, memory and quality (a row per variant, a column per length), the
    fitted exponents and crossovers, and the failures with their messages."""
    lengths = sorted({r.length for r in results})
    by_key = {(r.variant, r.length): r for r in results}
    header = ["variant", *(str(n) for n in lengths)]

    def table(text: Callable[[Measurement], str]) -> list[str]:
        rows = [
            [name, *(_cell(by_key[name, n], text) for n in lengths)] for name in settings.variants
        ]
        return markdown_table(header, rows)

    device = torch.device(settings.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        "# Attention benchmark",
        "",
        f"{where}, {settings.dtype}; batch {settings.batch_size}, {settings.heads} heads of "
        f"dimension {settings.head_dim}; the attention core (between the projections), "
        f"forward + backward; median of {settings.repeats} after {settings.warmup} warm-up; "
        f"limit {settings.time_limit:g} s per measurement.",
        "",
        "## Time (ms, forward + backward)",
        "",
        *table(lambda r: _number(r.time_ms)),
        "",
        "## Peak memory (MiB allocated during a call, inputs excluded)",
        "",
        *table(lambda r: _number(r.memory_mib)),
        "",
        "## Cosine similarity to exact causal softmax (output / attention matrix)",
        "",
        *table(
            lambda r: (
                f"{r.output_cosine:.4f} / "
                + ("–" if math.isnan(r.matrix_cosine) else f"{r.matrix_cosine:.4f}")
            )
        ),
        "",
        "Attention matrices are compared while B*H*T*T float32 values fit in "
        f"{settings.matrix_limit / MiB:g} MiB (– beyond).",
        "",
        "## Scaling with sequence length",
        "",
    ]
    fits = summary(results, settings.variants)

    def exponent(entry: dict, metric: str) -> str:
        value, used = entry[f"{metric}_exponent"], entry[f"{metric}_fit_lengths"]
        return "–" if value is None else f"{value:.2f} ({used[0]}–{used[-1]})"

    def crossover(name: str, entry: dict) -> str:
        if name == BASELINE:
            return "(baseline)"
        if "crossover" not in entry:
            return "n/a (vanilla not run)"
        return "never" if entry["crossover"] is None else str(entry["crossover"])

    lines += markdown_table(
        ["variant", "time exponent (lengths)", "memory exponent (lengths)", "faster than vanilla"],
        [
            [name, exponent(e, "time_ms"), exponent(e, "memory_mib"), crossover(name, e)]
            for name, e in fits.items()
        ],
    )
    lines += [
        "",
        "Exponent: least-squares slope of log(cost) against log(T) over the upper half of the "
        "lengths that ran (all of them when fewer than 4). Faster than vanilla: the first length "
        "from which the variant stays faster (a length where vanilla did not finish counts as "
        "faster).",
    ]
    failures = [r for r in results if not r.ok and r.status != "skipped"]
    if failures:
        lines += ["", "## Not measured", ""]
        lines += [f"- {r.variant}, T={r.length}: {r.status}" for r in failures]
    return "\n".join(lines) + "\n"


def render_csv(settings: Settings, results: Sequence[Measurement]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    shared = {
        "batch_size": settings.batch_size,
        "heads": settings.heads,
        "head_dim": settings.head_dim,
        "dtype": settings.dtype,
        "device": settings.device,
    }
    for result in results:
        writer.writerow({**asdict(result), **shared})
    return buffer.getvalue()


def write_outputs(
    settings: Settings, results: Sequence[Measurement], output_dir: str | Path
) -> dict[str, Path]:
    """results.csv, results.md, time.png and memory.png in output_dir, each written atomically."""
    output_dir = Path(output_dir)
    paths = {
        "csv": write_text(output_dir / "results.csv", render_csv(settings, results)),
        "markdown": write_text(output_dir / "results.md", render_markdown(settings, results)),
    }
    figures = {
        "time": ("time_ms", "forward + backward time (ms)"),
        "memory": ("memory_mib", "peak memory (MiB)"),
    }
    for key, (metric, label) in figures.items():
        series = {name: _series(results, name, metric) for name in settings.variants}
        title = f"attention core, B={settings.batch_size} H={settings.heads} D={settings.head_dim}"
        paths[key] = save_png(scaling_figure(series, label, title), output_dir / f"{key}.png")
    return paths


def available_memory() -> float:
    """Bytes of RAM available now (MemAvailable; free pages where /proc is absent)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got {text!r}") from None


def _options(assignments: Sequence[str]) -> dict[str, dict[str, Any]]:
    """["performer.nb_features=256", ...] -> {"performer": {"nb_features": 256}} (YAML values)."""
    options: dict[str, dict[str, Any]] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        variant, dot, option = key.partition(".")
        if not (sep and dot and variant and option):
            raise UserError(f"--set expects variant.option=value, got {assignment!r}")
        options.setdefault(variant, {})[option] = yaml.safe_load(value)
    return options


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Resolve the defaults that depend on the machine (device, lengths, memory budget)."""
    if args.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        try:
            device = str(torch.device(args.device))
        except RuntimeError as error:
            raise UserError(f"unknown --device {args.device!r}: {error}") from None
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but torch sees no CUDA GPU: use --device cpu")
    if args.lengths is not None:
        lengths = _int_list(args.lengths, "--lengths")
    else:
        low = args.min_length
        high = args.max_length or MAX_LENGTH[torch.device(device).type]
        if low <= 0 or high < low:
            raise UserError(f"need 0 < --min-length <= --max-length, got {low} and {high}")
        lengths = tuple(low * 2**i for i in range(int(math.log2(high / low)) + 1))
    if args.max_memory is not None:
        max_memory = args.max_memory * GiB if args.max_memory > 0 else None
    else:
        max_memory = CPU_MEMORY_FRACTION * available_memory() if device == "cpu" else None
    variants = tuple(v.strip() for v in args.variants.split(",")) if args.variants else None
    if variants is None:
        names = variant_names()
        variants = tuple(sorted(names, key=lambda name: name != BASELINE))  # baseline first
    settings = Settings(
        variants=variants,
        lengths=lengths,
        batch_size=args.batch_size,
        heads=args.heads,
        head_dim=args.head_dim,
        repeats=args.repeats,
        warmup=args.warmup,
        device=device,
        dtype=args.dtype,
        time_limit=args.time_limit,
        max_memory=max_memory,
        matrix_limit=args.matrix_limit * MiB,
        options=_options(args.set),
        seed=args.seed,
    )
    settings.validate()
    return settings


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = {f.name: f.default for f in fields(Settings)}
    parser = argparse.ArgumentParser(
        prog="python -m attn_lightning.bench attention",
        description="Time, memory and accuracy of the attention cores against sequence length.",
    )
    add = parser.add_argument
    add("--variants", help="comma-separated config names (default: all of conf/attention)")
    add("--lengths", help="comma-separated sequence lengths, e.g. 128,256,512")
    add("--min-length", type=int, default=MIN_LENGTH, help="first of the doubling lengths")
    add("--max-length", type=int, help="last of the doubling lengths (default 8192 CPU, 32768 GPU)")
    add("--batch-size", type=int, default=defaults["batch_size"])
    add("--heads", type=int, default=defaults["heads"])
    add("--head-dim", type=int, default=defaults["head_dim"])
    add("--repeats", type=int, default=defaults["repeats"], help="timed calls (median)")
    add("--warmup", type=int, default=defaults["warmup"], help="untimed calls first")
    add("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1 ...")
    add("--dtype", default=defaults["dtype"], choices=sorted(DTYPES))
    add("--time-limit", type=float, default=defaults["time_limit"], help="seconds per length")
    add(
        "--max-memory",
        type=float,
        help="GiB a call may need, by estimate (default on CPU: half the available RAM; "
        "on GPU none: out-of-memory errors are caught); 0 turns the estimate off",
    )
    add(
        "--matrix-limit",
        type=float,
        default=defaults["matrix_limit"] / MiB,
        help="MiB of B*H*T*T float32 values up to which attention matrices are compared",
    )
    add("--set", action="append", default=[], metavar="VARIANT.KEY=VALUE", help="repeatable")
    add("--seed", type=int, default=defaults["seed"])
    add("--output-dir", help="default: outputs/bench/attention/<timestamp>")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = settings_from_args(args)
    output_dir = args.output_dir or Path(
        "outputs", "bench", "attention", datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    )
    results = run(settings, log=lambda line: print(line, file=sys.stderr, flush=True))
    paths = write_outputs(settings, results, output_dir)
    print(paths["markdown"].read_text(encoding="utf-8"), end="")
    print(f"\nwritten: {', '.join(str(p) for p in paths.values())}")
