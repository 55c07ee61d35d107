"""The attention contract (attn_lightning/analysis/contract.py) holds for every conf/attention
option, and fails, naming the check and the worst position, on a variant that leaks the future
and on one whose decoding disagrees with its forward pass."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import torch
from helpers import ATTENTION_SHAPE, small_attention
from torch import Tensor

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
