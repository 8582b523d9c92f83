"""Request latencies on one PU by operation kind (from the PU's receipt of the request to its reply, a write's wait
for its append included), as histogram buckets for the metrics endpoint; and error replies by error class."""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

# Upper bounds of the buckets, in seconds: a read answered in the same pass is in the first; a write waits for its
# append (one fsync with `--fsync always`), a write-through one for the store too.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Latencies:
    """`observe(kind, seconds)`; `snapshot()` gives, by kind, the count per bucket (the last: past every bound),
    not cumulative, and the sum of the seconds observed."""

    def __init__(self) -> None:
        self._counts: dict[str, list[int]] = {}
        self._sums_s: dict[str, float] = {}

    def observe(self, kind: str, seconds: float) -> None:
        counts = self._counts.get(kind)
        if counts is None:
            counts = self._counts[kind] = [0] * (len(LATENCY_BUCKETS_S) + 1)
            self._sums_s[kind] = 0.0
        counts[bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self._sums_s[kind] += seconds

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {kind: {"counts": list(counts), "sum_s": self._sums_s[kind]} for kind, counts in self._counts.items()}
