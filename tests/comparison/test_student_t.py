"""Student t quantiles, intervals and Welch's test against closed forms and printed tables
(not against a second copy of the same algorithm)."""

from __future__ import annotations

import math

import pytest

from attn_lightning.comparison.student_t import mean_interval, t_cdf, t_ppf, welch_test


@pytest.mark.parametrize("t", [-3.0, -0.5, 0.0, 0.7, 2.5, 40.0])
def test_cdf_matches_the_closed_forms_of_one_two_and_four_degrees_of_freedom(t: float):
    # nu = 1 is the Cauchy distribution; nu = 2 and 4 have elementary CDFs
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    four = 0.5 + t * (t * t + 6) / (2 * (t * t + 4) ** 1.5)
    assert t_cdf(t, 4) == pytest.approx(four, abs=1e-12)


@pytest.mark.parametrize(
    ("df", "quantile"),  # t_{0.975, df} as printed in statistics tables
    [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (10, 2.228), (30, 2.042)],
)
def test_quantile_matches_the_printed_table(df: int, quantile: float):
    assert t_ppf(0.975, df) == pytest.approx(quantile, abs=5e-4)
    assert t_ppf(0.025, df) == pytest.approx(-quantile, abs=5e-4)


def test_quantile_tends_to_the_normal_one_and_inverts_the_cdf():
    assert t_ppf(0.975, 1e6) == pytest.approx(1.959964, abs=1e-4)
    for df in (1.5, 3.7, 17.2):  # Welch's degrees of freedom are not integers
        for p in (0.01, 0.3, 0.9, 0.999):
            assert t_cdf(t_ppf(p, df), df) == pytest.approx(p, abs=1e-10)
    with pytest.raises(ValueError, match="0 < p < 1"):
        t_ppf(1.0, 3)


def test_interval_of_one_two_three_by_hand():
    # mean 2, sd 1, n 3: half width t_{0.975,2} / sqrt(3) = 4.3027 / 1.7321 = 2.4841
    s = mean_interval([1.0, 2.0, 3.0])
    assert (s.mean, s.sd, s.n) == (2.0, 1.0, 3)
    assert s.half_width == pytest.approx(2.4841, abs=1e-4)
    assert (s.low, s.high) == pytest.approx((2.0 - 2.4841, 2.0 + 2.4841), abs=1e-4)


def test_one_value_has_no_interval_not_a_fake_one():
    s = mean_interval([1.9126])
    assert s.mean == 1.9126 and s.n == 1
    assert s.half_width is None and s.sd is None and s.low is None and s.high is None


def test_welch_by_hand_on_equal_variances():
    # means 2 and 4, both variances 1, n 3: t = -2 / sqrt(2/3) = -2.4495, df = 4;
    # two-sided p from the nu = 4 closed form at t^2 = 6: 2 (1 - (0.5 + 29.394 / 63.246))
    test = welch_test([1.0, 2.0, 3.0], [3.0, 4.0, 5.0])
    assert test.t == pytest.approx(-2.4495, abs=1e-4)
    assert test.df == pytest.approx(4.0)
    assert test.p == pytest.approx(0.0705, abs=1e-4)


def test_welch_degrees_of_freedom_with_unequal_variances_by_hand():
    # a: mean 2, s^2 1, n 3 -> v_a = 1/3; b: mean 10, s^2 = 16, n 3 -> v_b = 16/3 (b = 6, 10, 14)
    # df = (1/3 + 16/3)^2 / ((1/3)^2 / 2 + (16/3)^2 / 2) = (289/9) / (257/18) = 2.2490
    test = welch_test([1.0, 2.0, 3.0], [6.0, 10.0, 14.0])
    assert test.df == pytest.approx(578 / 257, rel=1e-9)
    assert test.t == pytest.approx(-8 / math.sqrt(17 / 3), rel=1e-9)


def test_welch_needs_two_values_per_side_and_handles_no_spread():
    assert welch_test([1.0], [1.0, 2.0]) is None
    assert welch_test([1.0, 1.0], [1.0, 1.0]).p == 1.0  # identical constants: no difference
    assert welch_test([1.0, 1.0], [2.0, 2.0]).p == 0.0  # different constants
