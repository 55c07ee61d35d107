"""Student's t distribution for the comparison protocol: a 95% interval of a mean over seeds,
and Welch's two-sided t-test of two arms.

Why not a library: scipy (`scipy.stats.t.ppf`, `ttest_ind(equal_var=False)`) is not a
dependency of this project and too heavy to add for two functions; torch's `StudentT` has no
`cdf` or `icdf`; numpy has neither. The t CDF is the regularized incomplete beta function,

    P(T <= t) = 1 - ½ I_x(ν/2, ½),  x = ν / (ν + t²),  for t >= 0 (symmetric for t < 0),

with I_x from its continued fraction (modified Lentz, Numerical Recipes §6.4), and the
quantile is the CDF inverted by bisection. Both are checked against closed forms (ν = 1, 2, 4)
and printed tables in tests/comparison/test_student_t.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

_EPS = 1e-15  # relative accuracy of the continued fraction
_TINY = 1e-300  # guards Lentz's divisions


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), converging for x < (a + 1) / (a + b + 2)."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    result = d
    for m in range(1, 10_000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),  # even step
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),  # odd step
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            result *= c * d
        if abs(c * d - 1.0) < _EPS:
            break
    return result


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` > 0 degrees of freedom (any real df: Welch's)."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_ppf(p: float, df: float) -> float:
    """The p-quantile of Student's t (0 < p < 1): the CDF inverted by bisection."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, 2.0 * high
    for _ in range(200):  # far past float resolution; stops early once the bracket is exact
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return 0.5 * (low + high)


@dataclass(frozen=True)
class MeanInterval:
    """The mean of n values and the half width of its two-sided Student t interval
    (`half_width` None for n < 2: one seed has no spread to estimate, so no interval)."""

    mean: float
    half_width: float | None
    n: int
    sd: float | None  # sample standard deviation (n - 1 in the denominator)

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width


def sample_sd(values: Sequence[float]) -> float | None:
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> MeanInterval:
    """mean ± t_{(1+c)/2, n-1} · s / √n over the values (seeds)."""
    if not values:
        raise ValueError("no values to average")
    n = len(values)
    mean = sum(values) / n
    sd = sample_sd(values)
    if sd is None:
        return MeanInterval(mean, None, n, None)
    half = t_ppf(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n)
    return MeanInterval(mean, half, n, sd)


@dataclass(frozen=True)
class WelchTest:
    """Welch's unequal-variance t-test of two samples' means: statistic, Welch–Satterthwaite
    degrees of freedom and the two-sided p-value."""

    t: float
    df: float
    p: float


def welch_test(a: Sequence[float], b: Sequence[float]) -> WelchTest | None:
    """Two-sided Welch test of mean(a) == mean(b); None when either sample has fewer than 2
    values (no variance to test with). Two samples without any spread: p = 1 if their means
    are equal, else 0 (the t statistic is infinite)."""
    sd_a, sd_b = sample_sd(a), sample_sd(b)
    if sd_a is None or sd_b is None:
        return None
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    var_a, var_b = sd_a**2 / len(a), sd_b**2 / len(b)
    se = math.sqrt(var_a + var_b)
    if se == 0.0:
        same = mean_a == mean_b
        return WelchTest(
            0.0 if same else math.copysign(math.inf, mean_a - mean_b), math.inf, float(same)
        )
    t = (mean_a - mean_b) / se
    df = (var_a + var_b) ** 2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1))
    return WelchTest(t, df, regularized_beta(df / 2.0, 0.5, df / (df + t * t)))  # 2 P(T > |t|)
