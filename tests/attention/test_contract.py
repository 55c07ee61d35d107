"""The attention contract (attn_lightning/analysis/contract.py) holds for every conf/attention
option, and fails, naming the check and the worst position, on a variant that leaks the future
and on one whose decoding disagrees with its forward pass. Its part for any sequence mixer:
x-transformers' causal attention keeps causality (its non-causal one does not), a module of
our own that leaks fails at the leaking position, and a recurrent step is checked against the
forward pass."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import torch
from helpers import ATTENTION_SHAPE, small_attention
from torch import Tensor, nn

from attn_lightning.analysis.contract import (
    ATTENTION_MATRIX,
    CAUSALITY_GRADIENTS,
    CAUSALITY_OUTPUTS,
    CHECKS,
    DECODING,
    DECODING_STATE,
    TIMING,
    CheckResult,
    ContractSizes,
    check_decoding_state,
    one_thread,
    run_contract,
    table,
)
from attn_lightning.analysis.mixer_contract import (
    MixerUnderTest,
    describe_output,
    mixer_factory,
    run_mixer_contract,
)
from attn_lightning.attention.kv_cache import KVCache
from attn_lightning.attention.vanilla import VanillaAttention
from attn_lightning.bench.attention.contract_timing import TimingSizes, check_timing

SIZES = ContractSizes(
    n_embd=ATTENTION_SHAPE["n_embd"],
    n_head=ATTENTION_SHAPE["n_head"],
    length=ATTENTION_SHAPE["block_size"],
)


class LeakyAttention(VanillaAttention):
    """Causal softmax attention, except that query `leak_at` also sees key
    `leak_at + distance`: the classic leak, at one (query, key) pair."""

    def __init__(self, *args: Any, leak_at: int, distance: int = 3, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.leak_at, self.distance = leak_at, distance

    def allowed(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        leak = (q_pos[:, None] == self.leak_at) & (k_pos[None, :] == self.leak_at + self.distance)
        return super().allowed(q_pos, k_pos) | leak


class WrongDecoding(VanillaAttention):
    """Exact in its forward pass; its decoding scales the outputs of positions >= wrong_from."""

    def __init__(self, *args: Any, wrong_from: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wrong_from = wrong_from

    def decode(
        self, q: Tensor, k: Tensor, v: Tensor, cache: KVCache, g: Tensor | None = None
    ) -> Tensor:
        out = super().decode(q, k, v, cache, g)  # (B, H, T_new, D)
        positions = torch.arange(cache.length - q.size(2), cache.length)
        return out * (1 + 0.1 * (positions >= self.wrong_from))[:, None]


class NoCache(VanillaAttention):
    """Its cache cannot be made: the decoding checks fail, the others still run."""

    def _new_core_cache(self) -> KVCache:
        raise NotImplementedError("no decoding for this variant")


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


def test_every_option_keeps_the_contract(variant: str) -> None:
    results = run_contract(small_attention(variant), SIZES)
    assert [r.name for r in results] == list(CHECKS)
    assert [r.failure for r in results if not r.passed] == []


@pytest.mark.parametrize("leak_at", [0, 13])
def test_a_leak_fails_causality_at_the_leaking_query(leak_at: int) -> None:
    distance = 3
    factory = functools.partial(LeakyAttention, leak_at=leak_at, distance=distance)
    results = by_name(run_contract(factory, SIZES))
    for name in (CAUSALITY_OUTPUTS, CAUSALITY_GRADIENTS, ATTENTION_MATRIX):
        result = results[name]
        assert not result.passed, name
        assert result.position == leak_at
        assert result.values["key"] == leak_at + distance
        assert f"query {leak_at} " in result.figure and f"key {leak_at + distance}" in result.figure
    assert results[CAUSALITY_OUTPUTS].values["max_change"] > SIZES.output_atol
    assert results[CAUSALITY_GRADIENTS].values["max_gradient"] > 0


@pytest.mark.parametrize("wrong_from", [2, 20])  # inside the prefill, and one token at a time
def test_decoding_that_disagrees_fails_at_its_first_wrong_position(wrong_from: int) -> None:
    results = by_name(run_contract(functools.partial(WrongDecoding, wrong_from=wrong_from), SIZES))
    decoding = results.pop(DECODING)
    assert not decoding.passed
    assert decoding.position == wrong_from
    assert f"position {wrong_from}" in decoding.failure
    assert all(r.passed for r in results.values()), [r.failure for r in results.values()]


def test_a_method_that_raises_is_a_failed_check_with_its_error() -> None:
    results = by_name(run_contract(NoCache, SIZES))
    for name in (DECODING, DECODING_STATE):
        assert not results[name].passed
        assert "NotImplementedError: no decoding for this variant" in results[name].figure
    assert results[CAUSALITY_OUTPUTS].passed and results[ATTENTION_MATRIX].passed


@pytest.mark.parametrize("variant", ["vanilla", "mqa", "sliding_window", "linear"])
def test_decoding_state_counts_what_the_cache_holds(variant: str) -> None:
    attn = small_attention(variant)(**ATTENTION_SHAPE).eval()
    with one_thread():
        result = check_decoding_state(attn, SIZES)
    half, full = SIZES.length // 2, SIZES.length
    sizes = result.values["bytes_per_sequence"]
    cache = attn.new_cache()
    if isinstance(cache, KVCache):  # k and v of the kept positions, n_kv_head heads
        kept = [min(t, cache.max_len) for t in (half, full)]
        per_position = 2 * attn.n_kv_head * attn.head_dim * torch.tensor(0.0).element_size()
        assert [sizes[half], sizes[full]] == [n * per_position for n in kept]
    else:
        assert sizes[half] == sizes[full] > 0
    grows = sizes[full] > sizes[half]
    assert ("grows with T" in result.figure) == grows
    assert ("constant in T" in result.figure) == (not grows)


def test_timing_fits_an_exponent_and_a_timeout_fails() -> None:
    tiny = TimingSizes(lengths=(16, 32), n_head=2, head_dim=4, warmup=0, repeats=1)
    result = check_timing(small_attention("vanilla"), tiny)
    assert result.passed and result.values["lengths"] == [16, 32]
    assert all(ms > 0 for ms in result.values["time_ms"])
    assert math.isfinite(result.values["exponent"])
    timeout = check_timing(
        small_attention("vanilla"), TimingSizes(**{**vars(tiny), "time_limit": 0})
    )
    assert not timeout.passed and timeout.name == TIMING and timeout.position == 16


def test_table_has_a_row_per_check_with_its_verdict() -> None:
    results = run_contract(functools.partial(WrongDecoding, wrong_from=4), SIZES)
    lines = table(results)
    assert len(lines) == 1 + len(results)
    for result, line in zip(results, lines[1:], strict=True):
        assert line.startswith(result.name) and ("FAIL" in line) == (not result.passed)


# any sequence mixer


class LookAhead(nn.Module):
    """A linear map of each position, except that position `leak_at` also adds the next
    input: a one-step look-ahead at one position. Returns (y, None), as many libraries'
    attention layers return a tuple."""

    def __init__(self, dim: int, leak_at: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        self.leak_at = leak_at

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        ahead = torch.zeros_like(x)
        ahead[:, self.leak_at] = x[:, self.leak_at + 1]
        return self.linear(x) + ahead, None


class RunningMean(nn.Module):
    """y_t = W mean(x_0..x_t): causal, with an exact recurrent step keeping (sum, count).
    `leak_from`: from that position on, the forward pass averages the whole sequence (a
    non-causal mean); `wrong_from`: the step scales its outputs from that position on."""

    def __init__(
        self, dim: int, leak_from: int | None = None, wrong_from: int | None = None
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        self.leak_from, self.wrong_from = leak_from, wrong_from

    def forward(self, x: Tensor) -> Tensor:
        T = x.size(1)
        mean = x.cumsum(1) / torch.arange(1, T + 1)[:, None]  # (B, T, C)
        if self.leak_from is not None:
            whole = x.mean(1, keepdim=True).expand_as(x)
            mean = torch.cat([mean[:, : self.leak_from], whole[:, self.leak_from :]], dim=1)
        return self.linear(mean)

    def step(self, x_t: Tensor, state: tuple[Tensor, int] | None) -> tuple[Tensor, Any]:
        """x_t (B, 1, C) -> y_t (B, C) (the (B, C) form the protocol accepts)."""
        total, count = (torch.zeros_like(x_t[:, 0]), 0) if state is None else state
        total, count = total + x_t[:, 0], count + 1
        y = self.linear(total / count)
        if self.wrong_from is not None and count - 1 >= self.wrong_from:
            y = 1.1 * y
        return y, (total, count)


def running_mean(**options: Any) -> Any:
    return mixer_factory(lambda dim: RunningMean(dim, **options), step="step")


def test_a_causal_mixer_passes_causality_and_the_rest_is_not_applicable() -> None:
    results = run_mixer_contract(mixer_factory(RunningMean), SIZES)
    assert [r.name for r in results] == list(CHECKS)
    named = by_name(results)
    assert named[CAUSALITY_OUTPUTS].passed and named[CAUSALITY_GRADIENTS].passed
    for name in (ATTENTION_MATRIX, DECODING, DECODING_STATE):
        assert named[name].passed and not named[name].applicable
        assert named[name].figure.startswith("not applicable: ")
    assert "no attention matrix" in named[ATTENTION_MATRIX].figure
    assert "no cache API" in named[DECODING].figure
    header, *lines = table(results)
    column = header.index("result")
    assert [line[column:].split()[0] for line in lines] == ["pass"] * 2 + ["n/a"] * 3


@pytest.mark.parametrize("leak_at", [0, 13])
def test_a_look_ahead_fails_causality_at_its_position(leak_at: int) -> None:
    factory = mixer_factory(lambda dim: LookAhead(dim, leak_at))
    results = by_name(run_mixer_contract(factory, SIZES))
    for name in (CAUSALITY_OUTPUTS, CAUSALITY_GRADIENTS):
        assert not results[name].passed, name
        assert results[name].position == leak_at
        assert results[name].values["key"] == leak_at + 1
        assert f"at position {leak_at}: query {leak_at} reads later key {leak_at + 1}" in (
            results[name].failure
        )


def test_a_mean_over_the_whole_sequence_fails_from_where_it_starts() -> None:
    leak_from = 20
    results = by_name(run_mixer_contract(running_mean(leak_from=leak_from), SIZES))
    for name in (CAUSALITY_OUTPUTS, CAUSALITY_GRADIENTS):
        assert not results[name].passed and results[name].position == leak_from, name
    assert not results[DECODING].passed  # its step is causal: the forward pass is not
    assert results[DECODING].position == leak_from


def test_an_exact_step_passes_decoding_with_a_constant_state() -> None:
    results = by_name(run_mixer_contract(running_mean(), SIZES))
    assert not results.pop(ATTENTION_MATRIX).applicable
    assert all(r.passed and r.applicable for r in results.values()), results
    assert "step(x_t, state) 1 token at a time" in results[DECODING].figure
    sizes = results[DECODING_STATE].values["bytes_per_sequence"]
    assert list(sizes.values()) == [SIZES.n_embd * 4] * 2  # the running sum, fp32
    assert "constant in T" in results[DECODING_STATE].figure


@pytest.mark.parametrize("wrong_from", [0, 20])
def test_a_wrong_step_fails_decoding_at_its_first_wrong_position(wrong_from: int) -> None:
    results = by_name(run_mixer_contract(running_mean(wrong_from=wrong_from), SIZES))
    assert not results[DECODING].passed
    assert results[DECODING].position == wrong_from
    assert f"at position {wrong_from}:" in results[DECODING].failure
    assert results[CAUSALITY_OUTPUTS].passed and results[DECODING_STATE].passed


def test_a_step_that_breaks_the_protocol_is_a_failed_check_saying_so() -> None:
    class NoState(RunningMean):
        def step(self, x_t: Tensor, state: Any) -> Tensor:  # type: ignore[override]
            return x_t

    results = by_name(run_mixer_contract(mixer_factory(NoState, step="step"), SIZES))
    assert not results[DECODING].passed
    assert "must return (y_t, state)" in results[DECODING].figure
    with pytest.raises(ValueError, match="has no method 'decode'"):
        MixerUnderTest(RunningMean(4), step="decode")


def test_a_wrong_output_shape_fails_naming_the_shapes() -> None:
    results = by_name(run_mixer_contract(mixer_factory(lambda dim: nn.Linear(dim, 2 * dim)), SIZES))
    figure = results[CAUSALITY_OUTPUTS].figure
    assert not results[CAUSALITY_OUTPUTS].passed
    assert "not the input's shape" in figure and str(2 * SIZES.n_embd) in figure


def test_a_tuple_is_read_by_its_first_element_and_said_so() -> None:
    mixer = MixerUnderTest(LookAhead(SIZES.n_embd, 3))
    assert "returns a tuple of 2: the checks read its first element" in describe_output(
        mixer, SIZES
    )
    assert "returns a Tensor" in describe_output(MixerUnderTest(RunningMean(SIZES.n_embd)), SIZES)


@pytest.mark.parametrize("causal", [True, False])
def test_x_transformers_attention(causal: bool) -> None:
    """x-transformers' `Attention(dim, causal=True)` keeps causality; without `causal` its
    first query reads the future."""
    x_transformers = pytest.importorskip("x_transformers")
    factory = mixer_factory(lambda dim: x_transformers.Attention(dim, causal=causal))
    results = by_name(run_mixer_contract(factory, SIZES))
    for name in (CAUSALITY_OUTPUTS, CAUSALITY_GRADIENTS):
        assert results[name].passed == causal, results[name].failure
        assert results[name].position == (None if causal else 0)
    assert not any(results[n].applicable for n in (ATTENTION_MATRIX, DECODING, DECODING_STATE))
