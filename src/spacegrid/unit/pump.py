"""The data pump (write-behind): persists the committed writes of a PU's partitions to the store in batches,
coalesced by key, sends what the store rejects for good to the dead-letter table, and trims the log behind it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from spacegrid import codec
from spacegrid.core.partition import Outcome, PartitionState
from spacegrid.engine.events import NO_EVENTS, EventSink
from spacegrid.engine.changelog import Changelog
from spacegrid.errors import SpacegridError, StaleWrite, StoreError, StoreRejected
from spacegrid.limits import Limits
from spacegrid.space import Space
from spacegrid.store.base import Row, Store

log = logging.getLogger("spacegrid.pump")


class Pumped(Protocol):
    """What the pump needs of a partition the PU owns (unit.slot.Slot)."""

    partition: int
    state: PartitionState
    last_seq: int
    persist: PersistState


@dataclass(eq=False)
class PersistState:
    """One owned partition's write-behind position: what the store holds, when the log was trimmed, retries."""

    lsn: int = 0  # the store holds every write with version <= lsn
    seq: int = 0  # the log message holding lsn (or a later one): the partition's replay starts after it
    unpersisted_since_s: float | None = None  # when the oldest write the store lacks was committed
    retry_at_s: float = 0.0
    backoff_s: float = 0.0
    deposed: bool = False  # the store holds a newer snapshot: another PU owns the partition now
    waiters: list[tuple[int, str, int, Outcome]] = field(default_factory=list)  # write-through: (lsn, reply to, id, outcome)

    def lag_s(self, now_s: float) -> float:
        return 0.0 if self.unpersisted_since_s is None else now_s - self.unpersisted_since_s


class Pump:
    """The write-behind loop of one PU: every `write_behind_delay_s` (or at once when a write-through write waits),
    each owned partition with unpersisted writes is persisted under the store's progress fence."""

    def __init__(self, store: Store, changelog: Changelog, space: Space, limits: Limits,
                 on_advance: Callable[[Any], None], trims: Callable[[], bool]) -> None:
        self.store = store
        self.on_advance = on_advance  # called with the slot whose store position advanced
        self.trims = trims  # whether this PU trims the log now (one PU of the grid does: the coordinator)
        self._positions: deque[tuple[float, int]] = deque()  # (when, the store's lowest log position), oldest first
        self._trimmed_seq = 0
        self._advance_at_s = 0.0  # quiet partitions' positions move up (and the log is trimmed) at most this often
        self.changelog = changelog
        self.space = space
        self.limits = limits
        self.kick = asyncio.Event()
        self.counters = {"store_rows": 0, "store_flushes": 0, "store_errors": 0, "dead_letters": 0, "log_trims": 0}
        self.available = True  # False while the store fails: the lag grows, the grid keeps serving
        self.events: EventSink = NO_EVENTS
        self.stopping = False  # run() ends at its next round (see MembershipAgent.run on cancellation)
        self._concurrency = asyncio.Semaphore(store.concurrency)

    async def run(self, owned: Callable[[], Iterable[Pumped]]) -> None:
        """Flush until `stopping`; started as a task by the PU, stopped (and cancelled) when it stops."""
        while not self.stopping:
            try:
                async with asyncio.timeout(self.limits.write_behind_delay_s):
                    await self.kick.wait()
            except TimeoutError:
                pass
            self.kick.clear()
            try:
                await self.flush_all(owned())
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive any one round (e.g. a dead-letter table that refuses rows)
                log.exception("write-behind round failed; the next round retries")
                self.counters["store_errors"] += 1

    async def flush_all(self, slots: Iterable[Pumped], retry_now: bool = False) -> bool:
        """Persist every partition with unpersisted writes; True if all of them are clean afterwards."""
        now_s = time.monotonic()
        slots = list(slots)
        due = [slot for slot in slots if slot.state.dirty and not slot.persist.deposed
               and (retry_now or now_s >= slot.persist.retry_at_s)]
        results = await asyncio.gather(*(self._flush_limited(slot) for slot in due))
        if now_s >= self._advance_at_s:
            self._advance_at_s = now_s + self.limits.log_trim_interval_s
            log_end = await self._log_end()
            for slot in slots:
                if not slot.state.dirty and not slot.persist.deposed:
                    await self._advance_position(slot, log_end)
            await self._maybe_trim(log_end)
        return all(results) and all(not slot.state.dirty for slot in slots if not slot.persist.deposed)

    async def _flush_limited(self, slot: Pumped) -> bool:
        async with self._concurrency:
            return await self.flush(slot)

    async def flush(self, slot: Pumped) -> bool:
        """Persist a snapshot of the partition's unpersisted writes; True on success."""
        state, persist = slot.state, slot.persist
        lsn, seq = state.lsn_committed, slot.last_seq
        snapshot_s = time.monotonic()
        rows = state.dirty_entries()
        if not rows:
            return True
        batch_rows = self.limits.write_behind_batch_rows
        try:
            for start in range(0, len(rows), batch_rows):
                batch = rows[start:start + batch_rows]
                last = start + batch_rows >= len(rows)
                try:
                    await self.store.persist(slot.partition, batch, lsn, seq, advance=last)
                except StoreRejected:
                    await self._isolate(slot.partition, batch, lsn, seq)
                    if last:
                        await self.store.persist(slot.partition, (), lsn, seq, advance=True)
        except StaleWrite as exc:
            log.warning("partition %d: %s; this PU no longer owns it, its pump stops", slot.partition, exc)
            persist.deposed = True
            return False
        except StoreError as exc:  # unavailable, or (from the dead-letter table itself) rejected: retried
            self.counters["store_errors"] += 1
            persist.backoff_s = min(self.limits.store_retry_backoff_s_max,
                                    max(2 * persist.backoff_s, self.limits.write_behind_delay_s))
            persist.retry_at_s = time.monotonic() + persist.backoff_s
            if self.available:
                log.warning("store unavailable (%s): write-behind retries with backoff; the grid keeps serving",
                            exc)
                self.events.emit("store_unavailable", error=str(exc)[:200])
            self.available = False
            return False
        if not self.available:
            log.info("store available again")
            self.events.emit("store_available")
        self.available = True
        persist.backoff_s = 0.0
        self.counters["store_rows"] += len(rows)
        self.counters["store_flushes"] += 1
        self._advance(slot, lsn, seq, snapshot_s)
        return True

    def _advance(self, slot: Pumped, lsn: int, seq: int, snapshot_s: float) -> None:
        persist = slot.persist
        assert lsn >= persist.lsn, "the store's position only advances"
        persist.lsn, persist.seq = lsn, max(seq, persist.seq)
        slot.state.on_persisted(lsn)
        persist.unpersisted_since_s = snapshot_s if slot.state.dirty else None
        self.on_advance(slot)

    async def _isolate(self, partition: int, rows: Sequence[Row], lsn: int, seq: int) -> None:
        """Persist a rejected batch by halves until each rejected row stands alone: those go to the dead-letter
        table (and to the compensation hooks); the rest is persisted."""
        try:
            await self.store.persist(partition, rows, lsn, seq, advance=False)
            return
        except StoreRejected as exc:
            if len(rows) > 1:
                middle = len(rows) // 2
                await self._isolate(partition, rows[:middle], lsn, seq)
                await self._isolate(partition, rows[middle:], lsn, seq)
                return
            error = str(exc)
        await self.store.dead_letter(partition, rows, error)
        self.counters["dead_letters"] += 1
        row = rows[0]
        log.error("partition %d: the store rejected %s[%r] at version %d for good (%s): sent to the dead-letter "
                  "table", partition, row.map, row.key, row.version, error)
        self._compensate(row, error)

    def _compensate(self, row: Row, error: str) -> None:
        value: Any = None
        if row.value is not None:
            try:
                value = self.space.values.decode(row.value, self.limits.write_bytes_max)  # typed, as handlers see it
            except SpacegridError:  # (a type no longer registered) the hook gets it as written
                value = codec.decode_opaque(row.value, self.limits.write_bytes_max)
        for hook in self.space.dead_letter_hooks:
            try:
                hook(row.map, row.key, value, row.version, error)
            except Exception:  # a failing hook must not stop the pump
                log.exception("dead-letter hook %r failed for %s[%r]", hook, row.map, row.key)

    async def _log_end(self) -> int:
        """The log's last PU message (0 if it cannot be read now)."""
        try:
            return await self.changelog.last_sequence(self.changelog.names.pu_log_wildcard)
        except Exception as exc:  # JetStream busy or away: positions and trims wait for the next round
            log.info("reading the log's end failed (%s)", exc)
            return 0

    async def _advance_position(self, slot: Pumped, log_end: int) -> None:
        """A partition with nothing to persist and nothing appending moves its store position up to the log's end
        as read before this check (none of its records can be past it but committed ones the store holds), so that
        quiet partitions do not hold the trimming of the log back."""
        state, persist = slot.state, slot.persist
        target = max(slot.last_seq, log_end)
        if persist.seq >= target or state.unsent or state.inflight is not None or state.dirty:
            return
        try:
            await self.store.persist(slot.partition, (), state.lsn_committed, target, advance=True)
        except StaleWrite:
            persist.deposed = True
            return
        except StoreError:
            return  # the next round tries again
        persist.lsn, persist.seq = max(persist.lsn, state.lsn_committed), target
        self.on_advance(slot)  # write-through replies waiting on a no-op write are answered by this advance too

    async def _maybe_trim(self, log_end: int) -> None:
        """Drop the log messages every partition's store position is past, at most every log_trim_interval_s, and
        only up to where the positions were log_trim_age_s ago: the log's tail keeps the operation ids of that
        long, so a client's retry after a failure of owner and backups alike is still recognised (the dedup
        window is rebuilt from the tail on recovery). Claims are never trimmed: the fence reads them."""
        now_s = time.monotonic()
        if log_end == 0 or not self.trims():
            return
        try:
            position = await self.store.log_position(self.space.partitions)
        except StoreError:
            return
        if position > log_end:  # a position from an earlier log (NATS lost its data): not this log's
            log.warning("the store's lowest log position %d is past the log's end %d: not trimming", position,
                        log_end)
            return
        self._positions.append((now_s, position))
        trim_to = self._trimmed_seq
        while self._positions and self._positions[0][0] <= now_s - self.limits.log_trim_age_s:
            trim_to = max(trim_to, self._positions.popleft()[1])
        if trim_to <= self._trimmed_seq:
            return
        try:
            await self.changelog.trim(trim_to)
        except (SpacegridError, asyncio.TimeoutError) as exc:
            log.info("log trim failed (%s); retried next round", exc)
            self._positions.appendleft((now_s - self.limits.log_trim_age_s, trim_to))
            return
        self._trimmed_seq = trim_to
        self.counters["log_trims"] += 1


async def load_from_store(store: Store, state: PartitionState, lsn: int, batch_rows: int) -> int:
    """Fill a fresh partition state from the store, whose progress position is `lsn`; returns the rows loaded.
    Read the position first: rows written by a concurrent pump may be newer, and the log's tail covers them."""
    state.begin_load(lsn)
    loaded = 0
    async for rows in store.load_partition(state.partition, batch_rows):
        loaded += state.load_rows((row.map, row.key, row.value, row.version) for row in rows if row.value is not None)
    return loaded
