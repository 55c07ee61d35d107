"""Holm's step-down correction of several tests read together (Holm 1979).

The protocol tests every arm against the best one: with m arms tested, at least one of m true
"no difference" hypotheses is rejected at the 5% level far more often than 5% of the time
(about 1 - 0.95^m when independent). Holm's procedure keeps that family-wise error at the
level for any dependence between the tests and is uniformly more powerful than Bonferroni:

    p_(1) <= ... <= p_(m) sorted,   p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))

and a hypothesis is rejected where its adjusted p~ is below the level. Written here because
scipy (whose `false_discovery_control` covers only FDR methods) and statsmodels are not
dependencies, and it is five lines.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def holm_adjusted(pvalues: Mapping[K, float]) -> dict[K, float]:
    """Holm-adjusted p-values, keyed as given (an empty mapping gives an empty dict)."""
    ordered = sorted(pvalues.items(), key=lambda kv: kv[1])
    m, running = len(ordered), 0.0
    adjusted: dict[K, float] = {}
    for rank, (key, p) in enumerate(ordered):
        running = max(running, min(1.0, (m - rank) * p))  # monotone in the sorted order
        adjusted[key] = running
    return adjusted
