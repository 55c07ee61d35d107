"""The attention contract: what every `CausalSelfAttention` promises, checked on one variant.

- causality: no output position reads a later input, neither through the output (perturb
  one later position, earlier outputs must not move) nor through gradients (exactly zero);
- the attention matrix (`forward(x, return_attn=True)`) is causal and equals the fast path;
- incremental decoding (`new_cache()`, `forward(x, cache=...)`) equals full recomputation;
- the decoding state: the bytes a cache holds per sequence at two lengths (a KV cache grows
  with T, a recurrent state does not).

The part of it that holds for any sequence mixer: analysis/mixer_contract.py.

Pure functions of a module factory and sizes, returning results; no Hydra, no Lightning. A
check that raises becomes a failed result carrying the error, so one broken method does not
hide the other checks. `python -m attn_lightning.check` (attn_lightning/check.py) is the CLI; it
adds a timing row measured by bench/attention/contract_timing.py.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from attn_lightning.analysis.masks import dependence
from attn_lightning.analysis.state_size import cache_bytes
from attn_lightning.attention.base import CausalSelfAttention

AttentionFactory = Callable[..., CausalSelfAttention]
KiB = 1024


@dataclass(frozen=True)
class ContractSizes:
    """Sizes and tolerances of the correctness checks (conf/check.yaml mirrors these)."""

    batch_size: int = 2
    n_embd: int = 32
    n_head: int = 4
    length: int = 96  # T of every check, and the module's block_size
    prefill: int = 5  # tokens given to the cache at once before decoding one at a time
    output_atol: float = 1e-6  # an earlier output may move this much when a later input does
    atol: float = 1e-5  # matrix vs fast path, decoding vs full: |a - b| <= atol + rtol |b|
    rtol: float = 1e-4
    seed: int = 0


@dataclass(frozen=True)
class CheckResult:
    """One row of the table. `position` is the worst position of a failure (the earliest
    query that breaks the check), None when the check passed or has no position. A check
    that does not apply to the module (`applicable` False) counts as passed; its figure says
    why it does not apply."""

    name: str
    passed: bool
    figure: str
    position: int | None = None
    values: dict[str, Any] = field(default_factory=dict)
    applicable: bool = True

    @property
    def failure(self) -> str:
        where = "" if self.position is None else f" at position {self.position}"
        return f"{self.name}{where}: {self.figure}"


Check = Callable[[Any, ContractSizes], CheckResult]  # (module under test, sizes) -> a row

CAUSALITY_OUTPUTS = "causality (outputs)"
CAUSALITY_GRADIENTS = "causality (gradients)"
ATTENTION_MATRIX = "attention matrix"
DECODING = "incremental decoding"
DECODING_STATE = "decoding state"
TIMING = "timing"


def not_applicable(name: str, reason: str) -> CheckResult:
    """The row of a check that does not apply to the module, with the reason."""
    return CheckResult(name, True, f"not applicable: {reason}", applicable=False)


def build(factory: Callable[..., nn.Module], sizes: ContractSizes) -> nn.Module:
    """The module under test at the check sizes, seeded, in eval mode (no dropout)."""
    torch.manual_seed(sizes.seed)
    module = factory(n_embd=sizes.n_embd, n_head=sizes.n_head, block_size=sizes.length)
    return module.eval()


def random_input(sizes: ContractSizes, length: int | None = None, offset: int = 0) -> Tensor:
    """x (B, T, C) standard normal, the same for every variant."""
    generator = torch.Generator().manual_seed(sizes.seed * 1_000_003 + offset)
    return torch.randn(sizes.batch_size, length or sizes.length, sizes.n_embd, generator=generator)


def earliest_leak(leak: Tensor, tolerance: float) -> tuple[int, int, float] | None:
    """(query, key, amount) of the earliest query i whose row of `leak` (T, T: how much
    output i moves with input j) exceeds `tolerance` above the diagonal, the key it reads most;
    None when no query reads a later key."""
    future = leak.triu(1)
    rows = (future > tolerance).any(dim=1).nonzero()
    if rows.numel() == 0:
        return None
    query = int(rows[0])
    key = int(future[query].argmax())
    return query, key, float(future[query, key])


def check_causality_outputs(module: nn.Module, sizes: ContractSizes) -> CheckResult:
    """Perturb input j alone, for every j: outputs before j must not move (by more than
    output_atol); the (query, key) table of changes names the earliest query that reads a
    later key. One forward pass: copy 0 of the batch unperturbed, copy j + 1 with x_j moved
    (so sequences of a batch must not mix either)."""
    x = random_input(sizes)
    noise = random_input(sizes, offset=1)
    B, T, C = x.shape
    copies = x.repeat(T + 1, 1, 1).view(T + 1, B, T, C)
    for j in range(T):
        copies[j + 1, :, j] += noise[:, j]
    with torch.no_grad():
        y, _ = module(copies.view((T + 1) * B, T, C))
    y = y.view(T + 1, B, T, C)
    change = (y[1:] - y[0]).abs().amax(dim=(1, 3)).T  # change[i, j]: max |Δ y_i| when x_j moves
    leak = earliest_leak(change, sizes.output_atol)
    worst = float(change.triu(1).max())
    if leak is None:
        return CheckResult(
            CAUSALITY_OUTPUTS,
            True,
            f"max change of an earlier output {worst:.2g} (tol {sizes.output_atol:g})",
            values={"max_change": worst},
        )
    query, key, amount = leak
    return CheckResult(
        CAUSALITY_OUTPUTS,
        False,
        f"query {query} reads later key {key}: its output moves by {amount:.3g} "
        f"(tol {sizes.output_atol:g})",
        position=query,
        values={"query": query, "key": key, "max_change": amount},
    )


def check_causality_gradients(module: nn.Module, sizes: ContractSizes) -> CheckResult:
    """d y_i / d x_j for every (i, j) (attn_lightning/analysis/masks.py): exactly zero for
    every later j."""
    grad = dependence(module, sizes.length, sizes.n_embd, sizes.seed)
    leak = earliest_leak(grad, 0.0)
    if leak is None:
        return CheckResult(
            CAUSALITY_GRADIENTS,
            True,
            "gradient into every later position exactly 0",
            values={"max_gradient": 0.0},
        )
    query, key, amount = leak
    return CheckResult(
        CAUSALITY_GRADIENTS,
        False,
        f"query {query} reads later key {key}: |d y_{query} / d x_{key}| = {amount:.3g} "
        "(must be exactly 0)",
        position=query,
        values={"query": query, "key": key, "max_gradient": amount},
    )


def mismatch(actual: Tensor, expected: Tensor, sizes: ContractSizes) -> tuple[int | None, float]:
    """The earliest position t (dim 1 of (B, T, C), or dim 2 of (B, H, T, D)) where
    |actual - expected| > atol + rtol |expected|, and the largest |actual - expected|."""
    error = (actual - expected).abs()
    bad = error > sizes.atol + sizes.rtol * expected.abs()
    time_dim = 1 if actual.dim() == 3 else 2
    other = tuple(d for d in range(actual.dim()) if d != time_dim)
    bad_positions = bad.any(dim=other).nonzero()
    first = int(bad_positions[0]) if bad_positions.numel() else None
    return first, float(error.max()) if error.numel() else 0.0


def check_attention_matrix(module: CausalSelfAttention, sizes: ContractSizes) -> CheckResult:
    """`forward(x, return_attn=True)` returns a (B, H, T, T) causal matrix, and its output
    (matrix @ v) equals the fast path `forward(x)`."""
    x = random_input(sizes)
    B, T, _ = x.shape
    with torch.no_grad():
        fast, _ = module(x)
        shown, att = module(x, return_attn=True)
    expected_shape = (B, module.n_head, T, T)
    if att is None or tuple(att.shape) != expected_shape:
        got = None if att is None else tuple(att.shape)
        return CheckResult(
            ATTENTION_MATRIX,
            False,
            f"return_attn gave a matrix of shape {got}, not {expected_shape}",
        )
    future = att.abs().amax(dim=(0, 1))  # (T, T): largest weight of query i on key j
    leak = earliest_leak(future, 0.0)
    if leak is not None:
        query, key, amount = leak
        return CheckResult(
            ATTENTION_MATRIX,
            False,
            f"the matrix is not causal: query {query} weighs later key {key} by {amount:.3g}",
            position=query,
            values={"query": query, "key": key},
        )
    first, error = mismatch(shown, fast, sizes)
    tolerance = f"(tol {sizes.atol:g} + {sizes.rtol:g}|y|)"
    if first is None:
        return CheckResult(
            ATTENTION_MATRIX,
            True,
            f"causal; max |matrix @ v - fast path| {error:.2g} {tolerance}",
            values={"max_error": error},
        )
    return CheckResult(
        ATTENTION_MATRIX,
        False,
        f"matrix @ v differs from the fast path from position {first} on "
        f"(max |difference| {error:.3g}) {tolerance}",
        position=first,
        values={"max_error": error},
    )


def decode_sequence(module: CausalSelfAttention, x: Tensor, prefill: int) -> Tensor:
    """Outputs (B, T, C) of x fed through one cache: `prefill` tokens at once, then one at a
    time."""
    cache = module.new_cache()
    prefill = max(1, min(prefill, x.size(1)))
    outputs = [module(x[:, :prefill], cache=cache)[0]]
    for t in range(prefill, x.size(1)):
        outputs.append(module(x[:, t : t + 1], cache=cache)[0])
    return torch.cat(outputs, dim=1)


def check_decoding(module: CausalSelfAttention, sizes: ContractSizes) -> CheckResult:
    """Prefill then one token at a time through `new_cache()`: the outputs of full
    recomputation `forward(x)` at every position."""
    x = random_input(sizes)
    with torch.no_grad():
        full, _ = module(x)
        decoded = decode_sequence(module, x, sizes.prefill)
    how = f"prefill {min(sizes.prefill, sizes.length)}, then 1 token at a time"
    return decoding_result(decoded, full, sizes, how, "full recomputation")


def decoding_result(
    decoded: Tensor, full: Tensor, sizes: ContractSizes, how: str, reference: str
) -> CheckResult:
    """The decoding row: `decoded` (B, T, C) against `full`, the outputs of `reference`;
    `how` says how the tokens were fed."""
    first, error = mismatch(decoded, full, sizes)
    tolerance = f"(tol {sizes.atol:g} + {sizes.rtol:g}|y|)"
    if first is None:
        return CheckResult(
            DECODING,
            True,
            f"{how}: max |decoded - full| {error:.2g} {tolerance}",
            values={"max_error": error},
        )
    return CheckResult(
        DECODING,
        False,
        f"{how}: decoded output differs from {reference} from position {first} on "
        f"(max |difference| {error:.3g}) {tolerance}",
        position=first,
        values={"max_error": error},
    )


def check_decoding_state(module: CausalSelfAttention, sizes: ContractSizes) -> CheckResult:
    """Bytes per sequence the cache holds after T/2 and T tokens: whether the decoding state
    grows with T (a KV cache) or stays constant (a recurrent state). Informational: it fails
    only when decoding itself fails."""
    short, long = max(1, sizes.length // 2), sizes.length
    x = random_input(sizes)
    sizes_at: dict[int, float] = {}
    with torch.no_grad():
        cache = module.new_cache()
        module(x[:, : min(sizes.prefill, short)], cache=cache)
        for t in range(min(sizes.prefill, short), long):
            if t == short:
                sizes_at[short] = cache_bytes(cache) / sizes.batch_size
            module(x[:, t : t + 1], cache=cache)
        sizes_at[long] = cache_bytes(cache) / sizes.batch_size
    return state_result(short, long, sizes_at[short], sizes_at[long])


def state_result(short: int, long: int, a: float, b: float) -> CheckResult:
    """The decoding-state row from the bytes per sequence a and b after `short` and `long`
    tokens."""
    if a == b:
        growth = "constant in T (recurrent state)"
    elif a > 0 and b > a:
        growth = f"grows with T (x{b / a:.2f} for x{long / short:g} T: KV cache)"
    else:
        growth = f"changes with T (x{b / a:.2f})" if a > 0 else "empty at T/2"
    return CheckResult(
        DECODING_STATE,
        True,
        f"{a / KiB:.3g} KiB/sequence at T={short}, {b / KiB:.3g} KiB at T={long}: {growth}",
        values={"bytes_per_sequence": {short: a, long: b}},
    )


def error_result(name: str, error: BaseException) -> CheckResult:
    """A check that raised: failed, with the error and where in the code it was raised."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    message = (str(error).splitlines() or [""])[0]
    return CheckResult(name, False, f"raised {type(error).__name__}: {message}{where}")


CHECKS: dict[str, Check] = {
    CAUSALITY_OUTPUTS: check_causality_outputs,
    CAUSALITY_GRADIENTS: check_causality_gradients,
    ATTENTION_MATRIX: check_attention_matrix,
    DECODING: check_decoding,
    DECODING_STATE: check_decoding_state,
}


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread inside: the correctness checks run tiny tensors, where a thread
    pool only adds overhead. The timing keeps the default, as the attention benchmark does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_contract(
    factory: Callable[..., nn.Module], sizes: ContractSizes, checks: dict[str, Check] = CHECKS
) -> list[CheckResult]:
    """Every check on a fresh module from `factory` (called with n_embd, n_head, block_size)."""
    results = []
    with one_thread():
        for name, check in checks.items():
            try:
                results.append(check(build(factory, sizes), sizes))
            except Exception as error:  # a broken method is a failed check; the others run
                results.append(error_result(name, error))
    return results


def table(results: list[CheckResult]) -> list[str]:
    """The results as aligned text lines: check, pass/FAIL, figure."""
    width = max(len("check"), *(len(r.name) for r in results))
    lines = [f"{'check':<{width}}  result  figure"]
    lines += [f"{r.name:<{width}}  {verdict(r):<6}  {r.figure}" for r in results]
    return lines


def verdict(result: CheckResult) -> str:
    """The result column: pass, FAIL, or n/a (the check does not apply)."""
    if not result.applicable:
        return "n/a"
    return "pass" if result.passed else "FAIL"
