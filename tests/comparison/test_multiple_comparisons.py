"""Holm's step-down adjustment, by hand."""

from __future__ import annotations

import pytest

from attn_lightning.comparison.multiple_comparisons import holm_adjusted


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 (m = 3): 3 * 0.01 = 0.03; max(0.03, 2 * 0.03) = 0.06;
    # max(0.06, 1 * 0.04) = 0.06 (the step-down keeps the adjusted values monotone)
    adjusted = holm_adjusted({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})


def test_holm_caps_at_one_and_leaves_a_single_test_alone():
    assert holm_adjusted({"a": 0.4, "b": 0.6}) == pytest.approx({"a": 0.8, "b": 0.8})
    assert holm_adjusted({"a": 0.02}) == {"a": 0.02}
    assert holm_adjusted({}) == {}


def test_holm_is_never_below_the_raw_p_nor_above_bonferroni():
    raw = {i: p for i, p in enumerate([0.001, 0.2, 0.012, 0.049, 0.5, 0.03])}
    adjusted = holm_adjusted(raw)
    for key, p in raw.items():
        assert p <= adjusted[key] <= min(1.0, len(raw) * p)
