"""The handler time limit counts CPU time: busy code is stopped at the limit, code blocked without CPU (on an event
that never comes; a PU paused by its CPU quota looks the same) only at WALL_LIMITS x the limit."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import pytest

from spacegrid.errors import HandlerTimeout, Overloaded
from spacegrid.unit.timelimit import WALL_LIMITS, TimeLimit

LIMIT_S = 0.05


@pytest.fixture
def limit() -> TimeLimit:
    previous = signal.getsignal(signal.SIGALRM)
    try:
        yield TimeLimit(LIMIT_S)
    finally:
        signal.signal(signal.SIGALRM, previous)


def test_busy_code_is_stopped_at_its_cpu_limit(limit: TimeLimit) -> None:
    """A loop that only burns CPU raises HandlerTimeout within a few limits."""
    started_s = time.monotonic()
    with pytest.raises(HandlerTimeout, match="past its limit"):
        with limit():
            while time.monotonic() - started_s < 5:  # bounded: the limit stops it long before
                pass
    assert time.monotonic() - started_s < 1.0


def test_waiting_without_cpu_is_not_stopped_before_the_wall_backstop(limit: TimeLimit) -> None:
    """Code that waits for 4 limits of wall time using no CPU (as a PU paused by its quota) runs to its end."""
    never_set = threading.Event()
    with limit():
        assert not never_set.wait(4 * LIMIT_S)  # the behaviour under test: blocked without using CPU, to its end


def test_code_that_blocks_is_stopped_at_the_wall_backstop(limit: TimeLimit) -> None:
    """Code that blocks for far longer than WALL_LIMITS limits is stopped at about WALL_LIMITS limits."""
    started_s = time.monotonic()
    never_set = threading.Event()
    with pytest.raises(HandlerTimeout):
        with limit():
            never_set.wait(40 * WALL_LIMITS * LIMIT_S)  # the behaviour under test: blocked, stopped by the backstop
    assert time.monotonic() - started_s < 3 * WALL_LIMITS * LIMIT_S


def _burn_cpu_s(cpu_s: float, limit: TimeLimit) -> None:
    """Busy until the main thread has used `cpu_s` of CPU (bounded: 5 s of wall time)."""
    until_s = limit.cpu_s() + cpu_s
    started_s = time.monotonic()
    while limit.cpu_s() < until_s and time.monotonic() - started_s < 5:
        pass


def test_a_call_stopped_by_its_messages_spent_budget_is_overloaded_not_timed_out(limit: TimeLimit) -> None:
    """Two calls in one event-loop tick: the first uses most of the tick's budget, the second (well within its own
    limit) is stopped when the budget runs out, with Overloaded (nothing applied, retry) instead of HandlerTimeout
    (the caller's fault, never retried); a third is refused before it starts."""
    async def one_tick() -> None:
        with limit():
            _burn_cpu_s(0.6 * LIMIT_S, limit)
        with pytest.raises(Overloaded, match="retry it"):
            with limit():
                _burn_cpu_s(0.9 * LIMIT_S, limit)  # alone it would finish; the tick's budget stops it
        with pytest.raises(Overloaded, match="not run"):
            with limit():
                pass

    asyncio.run(one_tick())
