"""The sweep: every variant's core at every length, timed, its memory measured and its output
compared with exact causal softmax; a failure is a result and the sweep goes on."""

from __future__ import annotations

import gc
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from attn_lightning.analysis.stats import exact_softmax
from attn_lightning.attention.base import CausalSelfAttention
from attn_lightning.attention.registry import build_attention
from attn_lightning.bench.attention.memory_ledger import peak_memory
from attn_lightning.bench.attention.settings import DTYPES, GiB, MiB, Settings
from attn_lightning.bench.attention.timing import MeasurementTimeout, time_calls


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


def random_layer_input(settings: Settings, length: int) -> Tensor:
    """x (B, T, n_embd) standard normal, from which a gated variant computes its gates (the
    same for every variant at this length; drawn on the CPU)."""
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + length + 1)
    shape = (settings.batch_size, length, settings.heads * settings.head_dim)
    return torch.randn(shape, generator=generator).to(settings.device, DTYPES[settings.dtype])


def own_leaves(
    module: CausalSelfAttention, x: Tensor, leaves: list[Tensor], settings: Settings, length: int
) -> list[Tensor]:
    """The shared leaves, or, for a core whose `split_heads` shapes q, k, v otherwise
    (gated_deltaproduct: n_h keys and values per token), standard normal leaves of its shapes
    (drawn on the CPU)."""
    with torch.no_grad():
        shapes = [t.shape for t in module.split_heads(x)]
    if shapes == [leaf.shape for leaf in leaves]:
        return leaves
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + length + 2)
    dtype = DTYPES[settings.dtype]
    return [
        torch.randn(shape, generator=generator).to(settings.device, dtype).requires_grad_()
        for shape in shapes
    ]


def row_cosine(a: Tensor, b: Tensor) -> float:
    """Mean over rows (the last dim is a row) of the cosine similarity, in float32 or wider."""
    return float(F.cosine_similarity(a.float(), b.float(), dim=-1).mean())


@torch.no_grad()
def quality(
    module: CausalSelfAttention,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    matrix_limit: float,
    g: Tensor | None = None,
) -> tuple[float, float]:
    """Cosine of the output and of the attention matrix to exact causal softmax on the same
    core inputs and gates (matrix NaN when B*H*T*T float32 values exceed matrix_limit bytes)."""
    q, k, v = module.core_inputs(q, k, v)  # what the core sees: RoPE, heads repeated
    out = module.attend(q, k, v, g)
    if k.size(2) != q.size(2):  # not a key per query (gated_deltaproduct's sub-steps)
        return math.nan, math.nan  # no causal softmax over the same keys to compare with
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    output_cosine = row_cosine(out, exact)
    B, H, T, _ = q.shape
    matrix_bytes = B * H * T * T * 4  # float32
    if matrix_bytes > matrix_limit:
        return output_cosine, math.nan
    return output_cosine, row_cosine(module.attention_matrix(q, k, g), exact_softmax(q, k))


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
        x = random_layer_input(settings, length)  # the gates' input (gated variants only)
        leaves = own_leaves(module, x, leaves, settings, length)
        tensors_with_grad = [*leaves, *module.parameters()]

        def clear_grads() -> None:
            for tensor in tensors_with_grad:
                tensor.grad = None

        def call() -> None:
            clear_grads()
            g = module.gates(x)  # (B, H, T, G) or None; in the call: its backward is timed too
            module.attend(*module.core_inputs(*leaves), g).backward(grad)

        seconds = time_calls(call, settings.warmup, settings.repeats, settings.time_limit, device)
        clear_grads()
        peak = peak_memory(call, device)
        clear_grads()
        with torch.no_grad():
            g = module.gates(x)
        output_cosine, matrix_cosine = quality(module, *leaves, settings.matrix_limit, g)
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
