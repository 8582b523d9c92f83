"""A PU's heartbeats from a thread of their own (issue 11): its member record, and with it its read lease, is renewed
on time even while handler code holds the PU's event loop. The thread runs its own event loop and NATS connection;
the PU's loop hands it the member info to publish, and learns from it when a renewal found the record removed.
It renews only while the PU's loop shows progress (a snapshot within the budget handler code may hold it) and its
main connection is up: a PU stuck or cut off otherwise is still declared dead, and its partitions move."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from spacegrid.engine.subjects import Names
from spacegrid.engine.transport import Transport
from spacegrid.limits import Limits
from spacegrid.security.access import Access

log = logging.getLogger("spacegrid.liveness")

STOP_JOIN_S = 5.0  # a stopping PU waits this long at most for the thread
WATCHDOG_LIMITS = 1.5  # handler time limits the PU's loop may be held (the time limit fires within 1.25 of one)


class LivenessThread:
    """`await start(revision, info)` once the PU registered; `publish(info)` with each new snapshot; `beat_now()`
    after a table change; `stop()`. Calls `on_renewed(revision, sent_at_s)` from the thread after each renewal
    (it only assigns numbers) and `on_removed()` on the PU's loop when the record was gone (declared dead)."""

    def __init__(self, nats_url: str, access: Access | None, names: Names, member_id: str, limits: Limits,
                 on_renewed: Callable[[int, float], None], on_removed: Callable[[], None],
                 main_connected: Callable[[], bool]) -> None:
        self.nats_url = nats_url
        self.access = access
        self.names = names
        self.member_id = member_id
        self.limits = limits
        self.on_renewed = on_renewed
        self.on_removed = on_removed
        self.main_connected = main_connected  # read from the thread: a bool the PU's connection keeps
        # the PU's loop may go this long without a snapshot (handler code holding it, within its budget)
        self.stall_max_s = WATCHDOG_LIMITS * limits.handler_time_limit_s + 2 * limits.heartbeat_interval_s
        self.renewals = 0
        self.withheld = 0  # renewals skipped because the PU's loop stalled or its connection was down
        self._published_at_s = time.monotonic()
        self._info: dict[str, Any] = {}
        self._revision = 0  # 0: not renewing (before start, or after the record was found removed)
        self._stopping = False
        self._main_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    async def start(self, revision: int, info: dict[str, Any]) -> None:
        """Start the thread (connecting within the connect bound), or hand it the new registration after a rejoin."""
        assert revision > 0
        self._info, self._revision = info, revision
        if self._thread is not None:
            self.beat_now()
            return
        self._main_loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"spacegrid-liveness-{self.member_id}", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._ready.wait, self.limits.connect_timeout_s + self.limits.bootstrap_timeout_s)
        if self._error is not None:
            raise self._error

    def publish(self, info: dict[str, Any]) -> None:
        self._info = info  # replaced whole: the thread reads one snapshot or the next, never a half
        self._published_at_s = time.monotonic()

    def beat_now(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def stop(self) -> None:
        self._stopping = True
        self.beat_now()
        if self._thread is not None:
            self._thread.join(STOP_JOIN_S)

    # ---- the thread ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to start(), or logged
            self._error = exc
            self._ready.set()
            log.error("the liveness thread stopped: %s", exc)

    async def _main(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        transport = await Transport.connect(self.nats_url, f"pu-liveness:{self.member_id}",
                                            connect_timeout_s=self.limits.connect_timeout_s,
                                            jetstream_timeout_s=self.limits.jetstream_api_timeout_s,
                                            access=self.access, quiet=True)  # the PU's own connection says it
        try:
            coord = await transport.coordination(self.names)
            self._ready.set()
            while not self._stopping:
                try:
                    async with asyncio.timeout(self.limits.heartbeat_interval_s):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self._wake.clear()
                if self._revision and not self._stopping:
                    try:
                        await self._renew(coord)
                    except Exception as exc:  # NATS in trouble: the next round tries again
                        log.warning("heartbeat renewal failed: %s", exc)
        finally:
            await transport.close()

    async def _renew(self, coord: Any) -> None:
        info, revision, sent_at_s = self._info, self._revision, time.monotonic()
        if sent_at_s - self._published_at_s > self.stall_max_s or not self.main_connected():
            self.withheld += 1  # the PU itself is stuck or cut off: let the coordinator declare it dead
            return
        renewed = await coord.renew(self.member_id, info, revision)
        if renewed is None:
            current = await coord.read_member(self.member_id)
            if current is not None and current[0].get("incarnation") == info.get("incarnation"):
                self._revision = current[1]  # an earlier renewal landed though its acknowledgement was lost
                return
            self._revision = 0  # until the PU registers again
            assert self._main_loop is not None
            self._main_loop.call_soon_threadsafe(self.on_removed)
            return
        self._revision = renewed
        self.renewals += 1
        self.on_renewed(renewed, sent_at_s)
