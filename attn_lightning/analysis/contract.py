"""The attention contract: what every `CausalSelfAttention` promises, checked on one variant;
and the part of it that holds for any sequence mixer.

- causality: no output position reads a later input, neither through the output (perturb
  one later position, earlier outputs must not move) nor through gradients (exactly zero);
- the attention matrix (`forward(x, return_attn=True)`) is causal and equals the fast path;
- incremental decoding (`new_cache()`, `forward(x, cache=...)`) equals full recomputation;
- the decoding state: the bytes a cache holds per sequence at two lengths (a KV cache grows
  with T, a recurrent state does not).

Any other torch module mapping (B, T, C) -> (B, T, C) (a library's attention layer, an SSM
block) is checked through `MixerUnderTest` (`run_mixer_contract`): both causality checks run;
the attention matrix is not applicable (a plain module shows none), nor are the decoding
checks unless the module has a recurrent step, named by the caller, with this protocol:

    y_t, state = module.<step>(x_t, state)

called for t = 0, 1, ..., T-1 in order, x_t = x[:, t:t+1] (B, 1, C), state None at t = 0 and
afterwards whatever the previous call returned (any object: its tensors are the decoding
state counted); y_t (B, 1, C) or (B, C) must equal forward(x)[:, t]. A module whose forward
returns a tuple is read by its first element.

Pure functions of a module factory and sizes, returning results; no Hydra, no Lightning. A
check that raises becomes a failed result carrying the error, so one broken method does not
hide the other checks. `python -m attn_lightning.check` (attn_lightning/check.py) is the CLI; it
adds a timing row measured by bench/attention/contract_timing.py.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Collection, Iterator
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
    first, error = mismatch(decoded, full, sizes)
    tolerance = f"(tol {sizes.atol:g} + {sizes.rtol:g}|y|)"
    how = f"prefill {min(sizes.prefill, sizes.length)}, then 1 token at a time"
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
        f"{how}: decoded output differs from full recomputation from position {first} on "
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


# Any sequence mixer (module docstring)


class MixerUnderTest(nn.Module):
    """A module mapping (B, T, C) -> (B, T, C), seen as the checks see attention:
    forward(x) -> (y, None), y the first element when the module returns a tuple; `step`:
    the name of its recurrent step method (module docstring), or None."""

    def __init__(self, mixer: nn.Module, step: str | None = None) -> None:
        super().__init__()
        if step is not None and not callable(getattr(mixer, step, None)):
            raise ValueError(f"{type(mixer).__qualname__} has no method {step!r}")
        self.mixer = mixer
        self.step_name = step

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        return self.output(self.mixer(x), x.shape, "forward"), None

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        """One token x_t (B, 1, C) through the named step -> y_t (B, 1, C) and the state."""
        assert self.step_name is not None
        returned = getattr(self.mixer, self.step_name)(x_t, state)
        if not (isinstance(returned, tuple) and len(returned) == 2):
            raise TypeError(f"{self.step_name}(x_t, state) must return (y_t, state)")
        y_t, state = returned
        if isinstance(y_t, Tensor) and y_t.dim() == 2:
            y_t = y_t.unsqueeze(1)  # (B, C) -> (B, 1, C)
        return self.output(y_t, x_t.shape, self.step_name), state

    @staticmethod
    def output(returned: Any, shape: torch.Size, method: str) -> Tensor:
        """The tensor the checks read: `returned`, or its first element, of x's shape."""
        y = returned[0] if isinstance(returned, tuple | list) and returned else returned
        if not isinstance(y, Tensor) or y.shape != shape:
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"{method} returned {got}, not the input's shape {tuple(shape)}")
        return y


MixerFactory = Callable[..., MixerUnderTest]


def mixer_factory(make: Callable[[int], nn.Module], step: str | None = None) -> MixerFactory:
    """A factory the contract (and the timing row) calls as it calls an attention factory:
    `make(n_embd)` builds the module (n_head and block_size, which a plain module does not
    take, are ignored)."""

    def factory(
        n_embd: int, n_head: int | None = None, block_size: int | None = None
    ) -> MixerUnderTest:
        return MixerUnderTest(make(n_embd), step)

    return factory


def describe_output(mixer: MixerUnderTest, sizes: ContractSizes) -> str:
    """What the module's forward returns on the check input: a tensor, or a tuple whose
    first element the checks read."""
    x = random_input(sizes)
    name = type(mixer.mixer).__qualname__
    try:
        with torch.no_grad():
            returned = mixer.mixer(x)
    except Exception as error:  # the checks report it, each as a failed row
        return f"{name}'s forward raised {type(error).__name__}: {error}"
    if isinstance(returned, tuple | list):
        return (
            f"{name} returns a {type(returned).__name__} of {len(returned)}: the checks read "
            "its first element as the output"
        )
    return f"{name} returns a {type(returned).__name__}: the checks read it as the output"


def step_sequence(
    mixer: MixerUnderTest, x: Tensor, measure: Collection[int] = ()
) -> tuple[Tensor, dict[int, int]]:
    """Outputs (B, T, C) of x fed one token at a time through the step, and the bytes the
    state holds after each number of tokens in `measure` (read then: a state may be updated
    in place)."""
    state, outputs, state_bytes = None, [], {}
    for t in range(x.size(1)):
        y_t, state = mixer.step(x[:, t : t + 1], state)
        outputs.append(y_t)
        if t + 1 in measure:
            state_bytes[t + 1] = cache_bytes(state)
    return torch.cat(outputs, dim=1), state_bytes


NO_CACHE = "no cache API (name a recurrent step: mixer.step=<method>)"


def check_step_decoding(mixer: MixerUnderTest, sizes: ContractSizes) -> CheckResult:
    """The named step, one token at a time from state None: the outputs of the full forward
    pass at every position."""
    if mixer.step_name is None:
        return not_applicable(DECODING, NO_CACHE)
    x = random_input(sizes)
    with torch.no_grad():
        full, _ = mixer(x)
        decoded, _ = step_sequence(mixer, x)
    first, error = mismatch(decoded, full, sizes)
    tolerance = f"(tol {sizes.atol:g} + {sizes.rtol:g}|y|)"
    how = f"{mixer.step_name}(x_t, state) 1 token at a time from None"
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
        f"{how}: decoded output differs from the full forward pass from position {first} on "
        f"(max |difference| {error:.3g}) {tolerance}",
        position=first,
        values={"max_error": error},
    )


def check_step_state(mixer: MixerUnderTest, sizes: ContractSizes) -> CheckResult:
    """Bytes per sequence of the tensors the step's state holds after T/2 and T tokens."""
    if mixer.step_name is None:
        return not_applicable(DECODING_STATE, NO_CACHE)
    short, long = max(1, sizes.length // 2), sizes.length
    with torch.no_grad():
        _, state_bytes = step_sequence(mixer, random_input(sizes), (short, long))
    a, b = (state_bytes[t] / sizes.batch_size for t in (short, long))
    return state_result(short, long, a, b)


def check_no_matrix(mixer: MixerUnderTest, sizes: ContractSizes) -> CheckResult:
    return not_applicable(ATTENTION_MATRIX, "no attention matrix (a plain module shows none)")


MIXER_CHECKS: dict[str, Check] = {
    CAUSALITY_OUTPUTS: check_causality_outputs,
    CAUSALITY_GRADIENTS: check_causality_gradients,
    ATTENTION_MATRIX: check_no_matrix,
    DECODING: check_step_decoding,
    DECODING_STATE: check_step_state,
}


def run_mixer_contract(factory: MixerFactory, sizes: ContractSizes) -> list[CheckResult]:
    """The contract's rows for any sequence mixer (`mixer_factory`): causality checked,
    decoding checked through the named step, the rest not applicable."""
    return run_contract(factory, sizes, MIXER_CHECKS)
