"""Latency histograms with fixed buckets, so that counts from any number of gateways add up.

Bucket upper bounds grow by 1.5× from 0.5 ms to about 10 minutes (35 buckets, then +Inf), which
keeps a percentile's error within a bucket's width (50 %) at any scale, in a few hundred bytes.
Percentiles interpolate linearly inside the bucket, as Prometheus' `histogram_quantile` does.
A histogram is a list of `NUM_BUCKETS` counts followed by the sum of the observations in
microseconds (Prometheus' `_sum`), so that adding two histograms is adding two lists.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

BOUNDS_S: tuple[float, ...] = tuple(0.0005 * 1.5**k for k in range(35))  # upper bounds, seconds
NUM_BUCKETS = len(BOUNDS_S) + 1  # the last one is +Inf
LENGTH = NUM_BUCKETS + 1  # counts, then the sum in microseconds


def bucket_of(seconds: float) -> int:
    """Index of the bucket `seconds` falls in (the first whose upper bound is >= it)."""
    return bisect.bisect_left(BOUNDS_S, max(0.0, seconds))


def empty() -> list[int]:
    return [0] * LENGTH


def observe(into: list[int], seconds: float) -> None:
    into[bucket_of(seconds)] += 1
    into[-1] += int(max(0.0, seconds) * 1_000_000)


def count(histogram: Sequence[int]) -> int:
    return sum(histogram[:NUM_BUCKETS])


def sum_seconds(histogram: Sequence[int]) -> float:
    return histogram[-1] / 1_000_000


def merge(into: list[int], other: Sequence[int] | None) -> list[int]:
    """Adds `other` to `into` (in place; a stored list of another length is ignored)."""
    if other is not None and len(other) == len(into):
        for i, count in enumerate(other):
            into[i] += int(count)
    return into


def quantile_ms(histogram: Sequence[int], q: float) -> float | None:
    """The `q` quantile in milliseconds (None without observations); +Inf bucket → its lower bound."""
    counts = histogram[:NUM_BUCKETS]
    total = sum(counts)
    if total == 0:
        return None
    rank, seen = q * total, 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            lower = BOUNDS_S[i - 1] if i > 0 else 0.0
            if i >= len(BOUNDS_S):
                return round(lower * 1000, 3)
            fraction = (rank - seen) / count
            return round((lower + (BOUNDS_S[i] - lower) * fraction) * 1000, 3)
        seen += count
    return round(BOUNDS_S[-1] * 1000, 3)
