"""The ticket workload: what a target must answer, and the closed-loop driver (70% availability, 25% reserve of 1-4
seats, 5% release) that records latencies and the history the invariant check replays."""

from __future__ import annotations

import math
import random
import time
from array import array
from typing import Any, Final, Protocol

from spacegrid.benchmark.history import Expected, History, ServerState

SEATS_PER_EVENT: Final = 100
EVENTS_MIN: Final = 1000
EVENTS_MAX: Final = 1_000_000
CONCURRENCY_DEFAULT: Final = 64
CONCURRENCY_MAX: Final = 1024
OPS_MAX_PER_RUN: Final = 5_000_000  # a hard bound on one target's load loop, whatever the time says
RATE_GUESS_OPS_S: Final = 40_000.0  # the rate the event count is sized for
FILL_MAX: Final = 0.25  # ...so that at most this share of the seats is sold at the end
SOLD_PER_OP_MAX: Final = 0.5  # net seats one operation can sell on average (25% x 2.5 seats - releases)
KINDS: Final = ("availability", "reserve", "release")
AVAILABILITY, RESERVE, RELEASE = 0, 1, 2
MIX: Final = {"availability": 0.70, "reserve": 0.25, "release": 0.05}
READ_KINDS: Final = ("availability",)
WRITE_KINDS: Final = ("reserve", "release")
ERROR_SAMPLES_MAX: Final = 5


class Target(Protocol):
    """One system under test: the three operations on events 0..N-1 of SEATS_PER_EVENT seats, its final state."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def create_events(self) -> None: ...
    async def availability(self, event: int) -> None: ...
    async def reserve(self, event: int, seats: tuple[int, ...], holder: str) -> bool: ...
    async def release(self, event: int, seats: tuple[int, ...], holder: str) -> int: ...
    async def state(self, expected: Expected) -> ServerState: ...
    async def window_mark(self, phase: str) -> None: ...  # "start" and "end" of the measured window
    def pids(self) -> dict[str, int]: ...  # the processes whose CPU counts (see measure.SHARED, measure.GROUP)
    def describe(self) -> dict[str, Any]: ...  # settings and counters for the report


def events_for(seconds: float, rate_guess: float = RATE_GUESS_OPS_S, fill_max: float = FILL_MAX) -> int:
    """Enough events that `rate_guess` ops/s for `seconds` sells at most `fill_max` of the seats."""
    wanted = math.ceil(rate_guess * seconds * SOLD_PER_OP_MAX / (SEATS_PER_EVENT * fill_max))
    return min(EVENTS_MAX, max(EVENTS_MIN, wanted))


class Driver:
    """`concurrency` closed-loop workers; latencies are recorded for operations completed while `measuring`."""

    def __init__(self, target: Target, events: int, seed: int) -> None:
        self.target = target
        self.events = events
        self.seed = seed
        self.history = History()
        self.measuring = False
        self.stopping = False
        self.ops_total = 0
        self.ops_measured = [0, 0, 0]
        self.latency_s = [array("d"), array("d"), array("d")]
        self.errors = [0, 0, 0]
        self.error_samples: list[str] = []
        self.reserve_attempts = 0
        self.reserve_ok = 0
        self.release_mismatches = 0  # releases whose freed count contradicts the history

    async def worker(self, w: int) -> None:
        rng = random.Random(self.seed * 1_000_003 + w)  # nosec B311  # seeded workload mix, not for secrets
        held: list[tuple[int, tuple[int, ...], str]] = []
        n = 0
        perf = time.perf_counter
        while not self.stopping and self.ops_total < OPS_MAX_PER_RUN:
            self.ops_total += 1
            r = rng.random()
            kind = AVAILABILITY if r < MIX["availability"] else RESERVE if r < 1 - MIX["release"] else RELEASE
            t0 = perf()
            if kind == AVAILABILITY:
                done = await self._availability(rng.randrange(self.events))
            elif kind == RESERVE:
                event, seats = self._pick(rng)
                t0 = perf()
                done = await self._reserve(event, seats, f"{w}-{n}", held)
                n += 1
            else:
                if held:
                    i = rng.randrange(len(held))
                    held[i], held[-1] = held[-1], held[i]
                    event, seats, holder = held.pop()
                else:  # nothing held: seats of a holder that has none, which frees nothing
                    (event, seats), holder = self._pick(rng), f"{w}-{n}"
                    n += 1
                t0 = perf()
                done = await self._release(event, seats, holder, t0)
            if done and self.measuring:
                self.latency_s[kind].append(perf() - t0)
                self.ops_measured[kind] += 1

    def _pick(self, rng: random.Random) -> tuple[int, tuple[int, ...]]:
        return rng.randrange(self.events), tuple(rng.sample(range(SEATS_PER_EVENT), rng.randint(1, 4)))

    async def _availability(self, event: int) -> bool:
        try:
            await self.target.availability(event)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            return self._error(AVAILABILITY, exc)
        return True

    async def _reserve(self, event: int, seats: tuple[int, ...], holder: str,
                       held: list[tuple[int, tuple[int, ...], str]]) -> bool:
        self.reserve_attempts += 1
        try:
            ok = await self.target.reserve(event, seats, holder)
        except Exception as exc:  # noqa: BLE001 - its outcome is unknown: the check leaves these seats alone
            self.history.uncertain[holder] = (event, seats)
            return self._error(RESERVE, exc)
        if ok:
            self.reserve_ok += 1
            self.history.reserved[holder] = (event, seats, time.perf_counter())
            held.append((event, seats, holder))
        return True

    async def _release(self, event: int, seats: tuple[int, ...], holder: str, sent_s: float) -> bool:
        expected = len(seats) if holder in self.history.reserved else 0
        try:
            freed = await self.target.release(event, seats, holder)
        except Exception as exc:  # noqa: BLE001
            self.history.uncertain[holder] = (event, seats)
            return self._error(RELEASE, exc)
        if expected:
            self.history.released[holder] = (event, seats, sent_s, freed)
        if freed != expected:
            self.release_mismatches += 1
        return True

    def _error(self, kind: int, exc: Exception) -> bool:
        self.errors[kind] += 1
        if len(self.error_samples) < ERROR_SAMPLES_MAX:
            self.error_samples.append(f"{KINDS[kind]}: {type(exc).__name__}: {exc}")
        return False


def percentiles_ms(samples: array) -> dict[str, float | int | None]:
    """count, p50, p90, p99, p99.9, max and mean of latencies in seconds, in milliseconds."""
    values = sorted(samples)
    n = len(values)

    def at(q: float) -> float | None:
        return None if n == 0 else round(values[min(n - 1, int(q * n))] * 1000, 3)

    return {"count": n, "p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "p999": at(0.999), "max": at(1.0),
            "mean": None if n == 0 else round(sum(values) / n * 1000, 3)}


def merged_ms(samples: list[array]) -> dict[str, float | int | None]:
    """Percentiles over several kinds at once (reads, writes)."""
    joined = array("d")
    for part in samples:
        joined.extend(part)
    return percentiles_ms(joined)


FSYNC_BEFORE_ACK: Final = "fsync before ack"  # a write is on disk when it is acknowledged: power loss loses none
ACK_BEFORE_FSYNC: Final = "ack before fsync"  # acknowledged first, on disk within the target's interval
