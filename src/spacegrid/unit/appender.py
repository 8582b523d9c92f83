"""Group commit on one PU: its partitions' pending writes appended together, one log message per tick fenced on the
claims (ADR 0009), a bounded number at once, and the replies that wait for those commits (write-through ones also
for the store)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from spacegrid.core.logformat import PART_FRAMING_BYTES_MAX, encode_pu_message
from spacegrid.core.partition import AppendBatch, Outcome
from spacegrid.engine.changelog import Changelog
from spacegrid.errors import FenceBusy, Fenced, LogUnavailable, SpacegridError
from spacegrid.limits import KIB, Limits
from spacegrid.unit.claims import ClaimView
from spacegrid.unit.logguard import LogGuard
from spacegrid.unit.replies import Replies
from spacegrid.unit.slot import Slot

log = logging.getLogger("spacegrid.appender")


class Appender:
    """`schedule(slot)` after a slot gains pending writes. Each log message holds the pending writes of every
    partition queued (one part per partition, ADR 0009), fenced on the claims this PU has seen; at most
    `limits.appends_in_flight_max` messages are in flight (one on a replicated stream), and a partition is in at
    most one of them, so under load each message carries more (group commit across partitions and across the
    wait). `on_settled(slot, error)` is called after every append of a partition that is no longer served or was
    claimed by another PU, and after every failed one."""

    def __init__(self, changelog: Changelog, claims: ClaimView, limits: Limits, replies: Replies,
                 on_settled: Callable[[Slot, SpacegridError | None], None], kick_store: Callable[[], None],
                 guard: LogGuard, replicated: bool = False) -> None:
        self.changelog = changelog
        self.guard = guard
        # On a replicated stream JetStream refuses an append while another one on the same fence is in process:
        # one at a time (group commit makes each carry more).
        self.in_flight_max = 1 if replicated else limits.appends_in_flight_max
        self.claims = claims
        self.limits = limits
        self.replies = replies
        self.on_settled = on_settled
        self.kick_store = kick_store
        self.waiting = 0  # replies waiting for a commit (or for the store), on every slot together
        self.counters = {"appends": 0, "records": 0, "parts": 0, "fence_retries": 0, "fence_busy": 0}
        self._queue: deque[Slot] = deque()  # each slot at most once (slot.queued): bounded by the partition count
        self._in_flight: set[asyncio.Task[None]] = set()
        self._paused = False  # after a refusal (FenceBusy, no stream), until _resume: appends would be refused too
        self._start_scheduled = False  # one _start per tick takes every slot queued in it

    def wait(self, slot: Slot, wait_lsn: int, reply_to: str, req_id: int, outcome: Outcome) -> None:
        """Answer once the partition committed `wait_lsn`."""
        slot.waiters.append((wait_lsn, reply_to, req_id, outcome))
        self.waiting += 1

    def schedule(self, slot: Slot) -> None:
        if slot.appending or slot.queued or not slot.state.unsent or not slot.serving:
            return
        slot.queued = True
        self._queue.append(slot)
        if len(self._in_flight) < self.in_flight_max and not self._start_scheduled:
            self._start_scheduled = True
            asyncio.get_running_loop().call_soon(self._start)  # after this tick's requests: one message for all

    async def wait_idle(self, timeout_s: float) -> None:
        """Until no append is in flight (bounded)."""
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=timeout_s)

    def _start(self) -> None:
        self._start_scheduled = False
        loop = asyncio.get_running_loop()
        if self._paused:
            return  # _resume starts them
        while self._queue and len(self._in_flight) < self.in_flight_max:
            entries = self._take_message()
            if not entries:
                continue
            task = loop.create_task(self._append(entries, self.claims.seen_seq))
            self._in_flight.add(task)
            task.add_done_callback(self._on_done)

    def _take_message(self) -> list[tuple[Slot, AppendBatch]]:
        """One message's worth of queued partitions' pending writes: parts are added while the message is under
        append_bytes_max - 1 KiB, and one part is at most append_bytes_max - 64, so a message stays under the
        stream's 2 x append_bytes_max."""
        entries: list[tuple[Slot, AppendBatch]] = []
        size_bytes = 0
        while self._queue and size_bytes < self.limits.append_bytes_max - KIB:
            slot = self._queue.popleft()
            slot.queued = False
            if not slot.state.unsent or not slot.serving:
                continue
            if self.claims.claimed_away(slot.partition, slot.claim_seq):
                self.on_settled(slot, Fenced(f"partition {slot.partition} was claimed by another PU"))
                continue
            batch = slot.state.take_append()
            assert batch is not None
            slot.appending = True
            entries.append((slot, batch))
            size_bytes += len(batch.payload) + PART_FRAMING_BYTES_MAX
        return entries

    def _on_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._start()

    async def _append(self, entries: list[tuple[Slot, AppendBatch]], claims_seq: int) -> None:
        """Append one message of the partitions' pending writes; then queue what they have behind it."""
        payload = encode_pu_message([(slot.partition, batch.payload) for slot, batch in entries])
        try:
            seq = await self.changelog.append(payload, claims_seq)
        except Fenced as exc:
            await self._refused(entries, exc)
            return
        except FenceBusy:
            self._retry_later(entries)
            return
        except LogUnavailable:
            self._wait_for_log(entries)
            return
        except SpacegridError as exc:
            for slot, _ in entries:
                slot.appending = False
                self.on_settled(slot, exc)
            return
        self.counters["appends"] += 1
        self.counters["parts"] += len(entries)
        for slot, batch in entries:
            assert seq > slot.last_seq, "a partition's log position only advances"
            slot.last_seq = seq
            slot.appending = False
            self.counters["records"] += batch.record_count
            self._release_waiters(slot, slot.state.on_append_committed())
            slot.mark_unpersisted()
            self._after(slot)

    async def _refused(self, entries: list[tuple[Slot, AppendBatch]], error: Fenced) -> None:
        """A claim landed after the one the message was fenced on: nothing of it was applied. Once the claims are
        seen up to the refusal's, partitions claimed by another PU are deposed; the others append again."""
        if error.last_seq < self.claims.seen_seq:  # the claims went back: a recreated log, its marker not in yet
            self._wait_for_log(entries)
            return
        self.counters["fence_retries"] += 1
        try:
            await self.claims.wait_seen(error.last_seq, self.limits.append_timeout_s)
        except SpacegridError as exc:
            log.warning("append refused and the claims cannot be read (%s): deposing its partitions", exc)
            for slot, _ in entries:
                slot.appending = False
                self.on_settled(slot, error)
            return
        self._retract(entries)
        for slot, _ in entries:
            self._after(slot)

    def _retry_later(self, entries: list[tuple[Slot, AppendBatch]]) -> None:
        """Refused, not applied, while another append on the fence was in process (a replicated stream; another
        PU's, since ours go one at a time there): the partitions append again after a short pause."""
        self.counters["fence_busy"] += 1
        self._retract(entries)
        self._paused = True
        asyncio.get_running_loop().call_later(self.limits.append_busy_retry_s, self._resume,
                                              [slot for slot, _ in entries])

    def _wait_for_log(self, entries: list[tuple[Slot, AppendBatch]]) -> None:
        """No stream took the message (nothing applied): the partitions keep their writes, and append again once
        the log guard says the log takes appends (at once if the stream is there, else once it is recreated)."""
        self._retract(entries)
        self._paused = True
        self.guard.unavailable(lambda: self._resume([slot for slot, _ in entries]))

    @staticmethod
    def _retract(entries: list[tuple[Slot, AppendBatch]]) -> None:
        """Nothing of the refused message was applied: its writes go back to the partitions' pending ones."""
        for slot, _ in entries:
            slot.appending = False
            slot.state.retract_append()

    def _resume(self, slots: list[Slot]) -> None:
        self._paused = False
        for slot in slots:
            self._after(slot)
        self._start()

    def _after(self, slot: Slot) -> None:
        """A slot's append settled: queue what follows, or tell the driver the partition is gone."""
        if self.claims.claimed_away(slot.partition, slot.claim_seq):
            self.on_settled(slot, Fenced(f"partition {slot.partition} was claimed by another PU"))
        elif slot.serving:
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
