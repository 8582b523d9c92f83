"""Pure parts of connecting to NATS: the reconnect backoff schedule and telling "grid down" from "unreachable"."""

from __future__ import annotations

import errno
import random

from spacegrid.engine.connection import (
    grid_down_or_unreachable,
    is_refused,
    reconnect_wait_s,
)
from spacegrid.limits import (
    NATS_RECONNECT_JITTER,
    NATS_RECONNECT_WAIT_S_MAX,
    NATS_RECONNECT_WAIT_S_MIN,
)


def test_reconnect_attempts_back_off_from_a_quarter_second_doubling_to_two_seconds_with_jitter() -> None:
    """The first attempt of an outage is immediate; then 0.25, 0.5, 1, 2, 2, ... s, each within +-20%."""
    rng = random.Random(7)
    assert reconnect_wait_s(1, rng) == 0.0
    expected = [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    for attempt, nominal in enumerate(expected, start=2):
        wait_s = reconnect_wait_s(attempt, rng)
        assert nominal * (1 - NATS_RECONNECT_JITTER) <= wait_s <= nominal * (1 + NATS_RECONNECT_JITTER)
    assert NATS_RECONNECT_WAIT_S_MIN == 0.25 and NATS_RECONNECT_WAIT_S_MAX == 2.0
    assert len({round(reconnect_wait_s(9, rng), 6) for _ in range(20)}) > 1  # jittered, not lock-step


def test_a_refused_connection_is_told_apart_from_other_failures() -> None:
    """ECONNREFUSED (also inside asyncio's "Multiple exceptions" for a name with several addresses) means nothing
    listens; timeouts and other errors do not."""
    assert is_refused(ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"))
    assert is_refused(OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 4222, 0, 0), "
                              "[Errno 111] Connect call failed ('127.0.0.1', 4222)"))
    assert not is_refused(OSError("Multiple exceptions: [Errno 111] a, [Errno 113] No route to host"))
    assert not is_refused(OSError(errno.EHOSTUNREACH, "No route to host"))
    assert not is_refused(TimeoutError())


def test_the_error_says_whether_the_grid_is_down_or_unreachable() -> None:
    """Refused: "the grid is down ... is the grid up?" with the command to start it; otherwise "unreachable" with
    the bound that ran out."""
    down = str(grid_down_or_unreachable("nats://h:1", True, 5.0, None))
    assert "grid is down" in down and "is the grid up?" in down and "spacegrid up" in down
    unreachable = str(grid_down_or_unreachable("nats://h:1", False, 2.5, TimeoutError()))
    assert "unreachable" in unreachable and "2.5 s" in unreachable and "--connect-timeout-s" in unreachable
