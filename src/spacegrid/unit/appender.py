"""Group commit on one PU: owned partitions' pending writes appended under the fence, a bounded number at once,
and the replies that wait for those commits (write-through ones also for the store)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from spacegrid.core.partition import Outcome
from spacegrid.engine.changelog import Changelog
from spacegrid.errors import SpacegridError
from spacegrid.limits import Limits
from spacegrid.unit.replies import Replies
from spacegrid.unit.slot import Slot

log = logging.getLogger("spacegrid.appender")


class Appender:
    """`schedule(slot)` after a slot gains pending writes. At most `limits.appends_in_flight_max` appends run at
    once, so under load each carries more writes (group commit across the wait). `on_settled(slot, error)` is
    called after every append of a partition that is no longer served, and after every failed one."""

    def __init__(self, changelog: Changelog, limits: Limits, replies: Replies,
                 on_settled: Callable[[Slot, SpacegridError | None], None], kick_store: Callable[[], None]) -> None:
        self.changelog = changelog
        self.limits = limits
        self.replies = replies
        self.on_settled = on_settled
        self.kick_store = kick_store
        self.waiting = 0  # replies waiting for a commit (or for the store), on every slot together
        self.counters = {"appends": 0, "records": 0}
        self._queue: deque[Slot] = deque()  # each slot at most once (slot.queued): bounded by the partition count
        self._in_flight: set[asyncio.Task[None]] = set()

    def wait(self, slot: Slot, wait_lsn: int, reply_to: str, req_id: int, outcome: Outcome) -> None:
        """Answer once the partition committed `wait_lsn`."""
        slot.waiters.append((wait_lsn, reply_to, req_id, outcome))
        self.waiting += 1

    def schedule(self, slot: Slot) -> None:
        if slot.appending or slot.queued or not slot.state.unsent or not slot.serving:
            return
        slot.queued = True
        self._queue.append(slot)
        self._start()

    async def wait_idle(self, timeout_s: float) -> None:
        """Until no append is in flight (bounded)."""
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=timeout_s)

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue and len(self._in_flight) < self.limits.appends_in_flight_max:
            slot = self._queue.popleft()
            slot.queued = False
            if not slot.state.unsent or not slot.serving:
                continue
            slot.appending = True
            task = loop.create_task(self._append(slot))
            self._in_flight.add(task)
            task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._start()

    async def _append(self, slot: Slot) -> None:
        """Append one message of the partition's pending writes, fenced on its previous one; then queue the rest."""
        batch = slot.state.take_append()
        assert batch is not None
        try:
            seq = await self.changelog.append(slot.partition, batch.payload, slot.last_seq)
        except SpacegridError as exc:
            slot.appending = False
            self.on_settled(slot, exc)
            return
        assert seq > slot.last_seq, "a partition's log sequence only advances"
        slot.last_seq = seq
        slot.appending = False
        self.counters["appends"] += 1
        self.counters["records"] += batch.record_count
        self._release_waiters(slot, slot.state.on_append_committed())
        slot.mark_unpersisted()
        if slot.serving:
            self.schedule(slot)
        else:
            self.on_settled(slot, None)

    def _release_waiters(self, slot: Slot, committed_lsn: int) -> None:
        waiters = slot.waiters
        while waiters and waiters[0][0] <= committed_lsn:
            _, reply_to, req_id, outcome = waiters.popleft()
            self.waiting -= 1
            self.answer(slot, reply_to, req_id, outcome)

    def answer(self, slot: Slot, reply_to: str, req_id: int, outcome: Outcome) -> None:
        """Reply to a committed operation; a write-through one only once the store holds it too."""
        if not outcome.durable or outcome.error is not None or outcome.wait_lsn <= slot.persist.lsn:
            self.replies.outcome(reply_to, req_id, outcome)
            return
        slot.persist.waiters.append((outcome.wait_lsn, reply_to, req_id, outcome))
        self.waiting += 1
        self.kick_store()

    def on_persisted(self, slot: Slot) -> None:
        """The pump advanced the partition's store position: answer the write-through writes it covers."""
        lsn = slot.persist.lsn
        waiting = slot.persist.waiters
        slot.persist.waiters = [waiter for waiter in waiting if waiter[0] > lsn]
        for wait_lsn, reply_to, req_id, outcome in waiting:
            if wait_lsn <= lsn:
                self.waiting -= 1
                self.replies.outcome(reply_to, req_id, outcome)

    def fail_waiters(self, slot: Slot, error: SpacegridError, unpersisted: SpacegridError) -> None:
        """Answer every request waiting on the slot: `error` for those waiting on the log, `unpersisted` for
        write-through ones the log holds and the store may not."""
        while slot.waiters:
            _, reply_to, req_id, _ = slot.waiters.popleft()
            self.waiting -= 1
            self.replies.error(reply_to, req_id, error)
        for _, reply_to, req_id, _ in slot.persist.waiters:
            self.waiting -= 1
            self.replies.error(reply_to, req_id, unpersisted)
        slot.persist.waiters.clear()
        assert self.waiting >= 0, "every waiter is counted once"
