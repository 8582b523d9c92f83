"""Re-run an assertion until it holds or a timeout passes, so tests wait on outcomes instead of sleeping."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def eventually(
    assertion: Callable[[], Awaitable[None] | None], timeout_s: float = 10.0, interval_s: float = 0.05
) -> None:
    """Call `assertion` (sync or async) until it stops raising AssertionError; after `timeout_s`, re-raise the last one."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = assertion()
            if inspect.isawaitable(result):
                await result
            return
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(interval_s)


def eventually_sync(assertion: Callable[[], object], timeout_s: float = 10.0, interval_s: float = 0.05) -> None:
    """Call `assertion` until it stops raising AssertionError; after `timeout_s`, re-raise the last one."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = assertion()
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise TypeError("eventually_sync got an async assertion: use `await eventually(...)`")
            return
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(interval_s)
