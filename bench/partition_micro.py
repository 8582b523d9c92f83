"""In-process costs of the ticket operations in one PartitionState (no NATS, no PU): where a PU's CPU goes per operation.

    .venv/bin/python bench/partition_micro.py [--profile]

Prints µs per call of execute("availability") (a read-only handler where the space declares it so) with and without
the PU's handler time limit, of a plain get of the same event, of reserve + release of one seat including their share
of the commit, and of the time limit alone. The calls run in an event loop that gets control every TICK_CALLS calls, as
a PU's loop does between messages (the time limit keeps a budget per tick).
--profile adds a cProfile of the reserve/release loop (cProfile inflates small calls: read shares, not times).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from contextlib import nullcontext
from typing import Any, Callable

from spacegrid.core.partition import PartitionState
from spacegrid.examples.tickets import space
from spacegrid.limits import DEFAULT_LIMITS
from spacegrid.unit import timelimit

# the PU's handler time limit: TimeLimit (a watchdog thread) since f221d76, AlarmTimeLimit (setitimer per call) before
PuTimeLimit = getattr(timelimit, "TimeLimit", None) or getattr(timelimit, "AlarmTimeLimit")

EVENTS = 50
CALLS = 20_000
TICK_CALLS = 20  # calls per event-loop tick: about the requests of one client message to one PU


def commit(state: PartitionState) -> None:
    while state.take_append() is not None:
        state.on_append_committed()


def make(time_limit: Callable[[], Any]) -> tuple[PartitionState, list[str]]:
    partition = space.partition_of("events", "E0")
    state = PartitionState(space, partition, DEFAULT_LIMITS, time_limit)
    events = [f"E{i}" for i in range(100 * EVENTS) if space.partition_of("events", f"E{i}") == partition][:EVENTS]
    for i, event in enumerate(events):
        state.execute(f"create-{i}", "create_event", event, {"seats": 100})
        commit(state)
    return state, events


def per_call_us(fn: Callable[[int], None], calls: int = CALLS) -> float:
    async def ticks() -> float:
        t = time.perf_counter()
        for i in range(calls):
            fn(i)
            if i % TICK_CALLS == TICK_CALLS - 1:
                await asyncio.sleep(0)
        return (time.perf_counter() - t) / calls * 1e6

    return asyncio.run(ticks())


def writes(state: PartitionState, events: list[str]) -> Callable[[int], None]:
    def run(i: int) -> None:
        # a reserve and a release of one seat for a fresh holder; commit every 4 iterations (8 writes per append)
        event = events[i % len(events)]
        seat = [f"S{i % 100}"]
        state.execute(f"r{i}", "reserve", event, {"seats": seat, "holder": f"h{i}"})
        state.execute(f"x{i}", "release", event, {"seats": seat, "holder": f"h{i}"})
        if i % 4 == 3:
            commit(state)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    limit = PuTimeLimit(1.0)
    read_only = getattr(space.handler_def("availability"), "read_only", False)
    print(f"availability is {'read-only' if read_only else 'a write-path handler'}; "
          f"PU time limit: {PuTimeLimit.__name__}")
    for name, time_limit in (("no time limit", nullcontext), (f"{PuTimeLimit.__name__} (as in a PU)", limit)):
        state, events = make(time_limit)
        availability = per_call_us(lambda i: state.execute(f"a{i}", "availability", events[i % len(events)], None))
        get = per_call_us(lambda i: state.get("events", events[i % len(events)]))
        write = per_call_us(writes(state, events)) / 2
        print(f"{name}: execute(availability) {availability:.2f} µs, get(events) {get:.2f} µs, "
              f"reserve or release of 1 seat with its share of the commit {write:.2f} µs")
    def armed(i: int) -> None:
        with limit():
            pass

    print(f"{PuTimeLimit.__name__} enter + exit alone: {per_call_us(armed, 100_000):.2f} µs")
    if args.profile:
        state, events = make(nullcontext)
        profiler = cProfile.Profile()
        profiler.enable()
        per_call_us(writes(state, events))
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
