"""The one quantile the bench and the chaos report use."""

from __future__ import annotations

import math


def percentile(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted samples (nearest rank); NaN for none."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
