"""A bounded write workload for fault tests, with the history of what it was told, and its check."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

from spacegrid import Client

COUNTERS = [f"c{i}" for i in range(8)]


@dataclass
class History:
    """What the writer was told: acknowledged puts and increments, and the slowest call."""

    acked_puts: dict[str, int] = field(default_factory=dict)
    attempted_puts: set[str] = field(default_factory=set)
    acked_incr: dict[str, int] = field(default_factory=dict)
    attempted_incr: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    slowest_s: float = 0.0


async def write_load(client: Client, history: History, ops: int, workers: int, time_budget_s: float,
                     on_progress: Callable[[int], bool | None] = lambda done: None) -> None:
    """Bounded in count and time: each worker alternates a put of a fresh key and an increment.
    on_progress(done) returning True stops the load."""
    deadline = time.monotonic() + time_budget_s
    done = 0
    stopped = False

    async def worker(w: int) -> None:
        nonlocal done, stopped
        for i in range(ops // workers):
            if stopped or time.monotonic() > deadline:
                return
            started = time.monotonic()
            try:
                if i % 2 == 0:
                    key = f"w{w}-{i}"
                    history.attempted_puts.add(key)
                    await client.put("kv", key, i)
                    history.acked_puts[key] = i
                else:
                    counter = COUNTERS[(w + i) % len(COUNTERS)]
                    history.attempted_incr[counter] = history.attempted_incr.get(counter, 0) + 1
                    await client.execute("incr", counter)
                    history.acked_incr[counter] = history.acked_incr.get(counter, 0) + 1
            except Exception as exc:  # recorded and asserted on by the tests
                history.errors.append(f"{type(exc).__name__}: {exc}")
            history.slowest_s = max(history.slowest_s, time.monotonic() - started)
            done += 1
            stopped = stopped or bool(on_progress(done))

    await asyncio.gather(*(worker(w) for w in range(workers)))


async def check_history(client: Client, history: History, exact: bool) -> None:
    """No acknowledged write lost; counters exact (or, when calls failed, between acked and attempted)."""
    stored = await client.get_many("kv", sorted(history.attempted_puts))
    lost = {key for key in history.acked_puts if stored.get(key) != history.acked_puts[key]}
    assert not lost, f"acknowledged puts lost: {sorted(lost)[:10]}"
    for counter in COUNTERS:
        value = int(await client.get("counters", counter) or 0)
        acked, attempted = history.acked_incr.get(counter, 0), history.attempted_incr.get(counter, 0)
        if exact:
            assert value == acked, f"{counter}: {value} != {acked} acknowledged increments"
        else:
            assert acked <= value <= attempted, f"{counter}: {value} outside [{acked}, {attempted}]"


class FaultAt:
    """An on_progress hook for write_load: runs `action` once, when the n-th operation completes."""

    def __init__(self, n: int, action: Callable[[], None]) -> None:
        self.n = n
        self.action = action
        self.fired = False

    def __call__(self, done: int) -> None:
        if done >= self.n and not self.fired:
            self.fired = True
            self.action()
