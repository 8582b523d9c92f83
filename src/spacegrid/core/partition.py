"""The partition state machine: committed entries, the uncommitted overlay, group commit and exactly-once retries. No I/O.

Ordering contract (asserted here, performed by the PU driver): apply locally to the overlay, append under the
fence, then acknowledge. A reply to any write-path operation waits until every write it may have observed is
committed (`Outcome.wait_lsn <= lsn_committed`); reads see committed entries only.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from spacegrid import codec
from spacegrid.errors import (
    HandlerError,
    LogGap,
    NotLoaded,
    RequestError,
    SpacegridError,
)
from spacegrid.limits import Limits
from spacegrid.core.eviction import MapEviction
from spacegrid.core.logformat import parts_of
from spacegrid.space import Space
from spacegrid.core.context import HandlerContext, QueryView
from spacegrid.core.entries import DELETED, VALUE, VERSION, Entry
from spacegrid.core.rows import Row, digest_of

LOG_WRITES = "w"
EMPTY_MAP: dict[str, Entry] = {}  # never written: what reads of a map with no entry yet look in




@dataclass(slots=True)
class Outcome:
    """What an operation answers, and the log position its reply must wait for."""

    value: Any
    wait_lsn: int
    error: SpacegridError | None = None
    durable: bool = False  # write-through: the reply also waits until the store holds wait_lsn
    kind: str = ""  # set by the PU that serves it: the operation's kind and when its request arrived (monotonic),
    received_s: float = 0.0  # for the latency of its reply


@dataclass(slots=True)
class PendingOp:
    op_id: str
    lsn_last: int
    result: Any
    encoded: bytes
    writes: list[tuple[str, str, Entry]]


@dataclass(slots=True)
class AppendBatch:
    """One log message for the driver to append under the fence."""

    lsn_last: int
    record_count: int
    payload: bytes
    ops: list[PendingOp] = field(repr=False)


class PartitionState:
    """One partition's entries on its owner, from replay through serving."""

    def __init__(
        self,
        space: Space,
        partition: int,
        limits: Limits,
        time_limit: Callable[[], AbstractContextManager[Any]] = nullcontext,
        track_dirty: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.space = space
        self.values = space.values  # the space's codec: its registered types typed, in handlers and results
        self.partition = partition
        self.limits = limits
        self.time_limit = time_limit
        self.maps: dict[str, dict[str, Entry]] = {}
        self.overlay: dict[tuple[str, str], Entry] = {}
        self.log_epoch = 0
        self.lsn_committed = 0
        self.lsn_assigned = 0
        self.unsent: deque[PendingOp] = deque()
        self.inflight: AppendBatch | None = None
        self.pending_by_op: dict[str, PendingOp] = {}
        self.dedup: OrderedDict[str, Any] = OrderedDict()
        self.async_maps = frozenset(m.name for m in space.maps.values() if m.replication == "async")
        # Write-behind bookkeeping (only with a store): committed writes of persisted maps not in the store yet,
        # (map, key) -> version; and the store position this state was loaded from (replay skips up to it).
        self.persisted_maps = frozenset(m.name for m in space.maps.values() if m.persistence != "none") \
            if track_dirty else frozenset()
        self.write_through_maps = frozenset(m.name for m in space.maps.values() if m.persistence == "write-through") \
            if track_dirty else frozenset()
        self.dirty: dict[tuple[str, str], int] = {}
        self.loaded_lsn = 0
        # Maps bounded in memory or expiring (eviction by size or idleness only with a store to read back from).
        self.clock = clock
        self.eviction = {m.name: MapEviction(m.eviction, space.partitions) for m in space.maps.values()
                         if m.eviction is not None and (track_dirty or not m.eviction.evicts)}
        self.cache = {name: [0, 0, 0, 0] for name in self.eviction}  # map -> [hits, misses, evictions, expirations]

    # ---- loading from the store ----------------------------------------------------------------------------

    def begin_load(self, lsn: int) -> None:
        """Start from the store's copy: every write with version <= lsn is in it (rows may be newer still)."""
        assert self.lsn_committed == 0 and not self.maps and self.inflight is None, "load only a fresh state"
        self.lsn_committed = self.lsn_assigned = self.loaded_lsn = lsn

    def load_rows(self, rows: Iterable[tuple[str, str, bytes, int]]) -> int:
        """Add (map, key, value, version) rows read from the store, as clean entries, up to each map's bound (the
        rest stays in the store, read through on demand); returns how many were added."""
        count = 0
        now_s = self.clock()
        for map_name, key, value, version in rows:
            tracker = self.eviction.get(map_name)
            if tracker is not None:
                if tracker.full():
                    tracker.complete = False
                    continue
                tracker.written_at(key, len(key) + len(value), now_s)
            self.maps.setdefault(map_name, {})[key] = (value, version)
            count += 1
        return count

    def load_key(self, map_name: str, key: str, row: tuple[bytes, int] | None) -> None:
        """Read-through: the store's copy of a key that was not in memory (None: the store has none either)."""
        if (map_name, key) in self.overlay or key in self.maps.get(map_name, EMPTY_MAP) or (map_name, key) in self.dirty:
            return  # written (or deleted, not yet persisted) or loaded since the read began: memory is newer
        tracker = self.eviction[map_name]
        if row is None:
            tracker.remember_absent(key)
            return
        value, version = row
        assert version <= self.lsn_committed, "the store never holds a write its owner has not committed"
        self.maps.setdefault(map_name, {})[key] = (value, version)
        tracker.written_at(key, len(key) + len(value), self.clock())

    # ---- replay -------------------------------------------------------------------------------------------

    def replay_log_message(self, message: Any, part_bytes_max: int,
                           refusal: Callable[[int], str | None] | None = None) -> list[str]:
        """Apply this partition's part, if any, of one PU log message (as decoded msgpack; ADR 0009), unless
        `refusal(its epoch)` says why it must not be (a record the table never let its writer append): then it is
        skipped and the reason returned."""
        refused: list[str] = []
        for partition, part in parts_of(message):
            if partition == self.partition:  # (results kept as written: a retry's reply sends them back as they are)
                record = codec.decode_opaque(part, part_bytes_max)
                why = None if refusal is None else refusal(int(record[1]))
                if why is None:
                    self.replay(record)
                else:
                    refused.append(why)
        return refused

    def replay(self, message: Any) -> None:
        """Apply one committed log message (as decoded msgpack) during recovery."""
        assert not self.unsent and self.inflight is None, "replay only before serving"
        kind, epoch = message[0], int(message[1])
        assert epoch >= self.log_epoch, f"log epochs only grow: {epoch} after {self.log_epoch}"
        self.log_epoch = epoch
        assert kind == LOG_WRITES, f"unknown log record kind {kind!r}"
        for op_id, result, records in message[2]:
            for map_name, key, version, value, deleted in records:
                if version <= self.lsn_committed:
                    assert version <= self.loaded_lsn, "versions only grow"
                    continue  # the store already held it when this state was loaded
                if version != self.lsn_committed + 1:
                    raise LogGap(f"partition {self.partition}: the log continues at version {version} after "
                                 f"{self.lsn_committed}; the records between were trimmed after a newer store copy "
                                 "was written (reload from the store), or the store lost them (restore it)")
                self._commit_write(map_name, key, (DELETED if deleted else bytes(value), version))
                self.lsn_committed = version
            self._remember(op_id, result)
        self.lsn_assigned = self.lsn_committed

    # ---- reads ---------------------------------------------------------------------------------------------

    def holds(self, map_name: str, key: object) -> bool:
        """Whether `key` has a committed entry in memory: then it was checked when written (a valid key whose
        partition is this one), and needs no routing check again."""
        return type(key) is str and key in self.maps.get(map_name, EMPTY_MAP)

    def get_encoded(self, map_name: str, key: str) -> tuple[bytes, int] | None:
        """The last committed value (msgpack-encoded, as stored) and version, or None. An async map answers with
        its latest applied value, as its writes were acknowledged once applied."""
        if map_name in self.async_maps:
            return self._lookup(map_name, key)
        entry = self.maps.get(map_name, EMPTY_MAP).get(key)
        if map_name in self.eviction:
            self._track_read(map_name, key, entry is not None)
        return entry

    def get(self, map_name: str, key: str) -> tuple[Any, int] | None:
        """The last committed value (a fresh copy) and version, or None."""
        entry = self.maps.get(map_name, EMPTY_MAP).get(key)
        if entry is None:
            return None
        return self.values.decode(entry[VALUE], self.limits.write_bytes_max), entry[VERSION]

    def query(self, name: str, args: Any) -> Any:
        definition = self.space.query_def(name)
        with self.time_limit():
            try:
                return definition.fn(QueryView(self), args)
            except SpacegridError:
                raise
            except Exception as exc:
                raise HandlerError(f"query {name!r} raised {type(exc).__name__}: {exc}", type(exc).__name__) from exc

    # ---- writes --------------------------------------------------------------------------------------------

    def put(self, op_id: str, map_name: str, key: str, value: Any, expected_version: int | None) -> Outcome:
        return self._write(op_id, map_name, key, lambda ctx: ctx.cas_put(key, value, expected_version))

    def delete(self, op_id: str, map_name: str, key: str, expected_version: int | None) -> Outcome:
        return self._write(op_id, map_name, key, lambda ctx: ctx.cas_delete(key, expected_version))

    def execute(self, op_id: str, handler_name: str, key: str, args: Any) -> Outcome:
        """Run a handler; a read-only one on committed entries, answered at once (no op id needed)."""
        definition = self.space.handler_def(handler_name)

        def run(ctx: HandlerContext) -> Any:
            with self.time_limit():
                try:
                    return definition.fn(ctx, key, args)
                except SpacegridError:
                    raise
                except Exception as exc:
                    raise HandlerError(f"handler {handler_name!r} raised {type(exc).__name__}: {exc}",
                                       type(exc).__name__) from exc

        if definition.read_only:
            ctx = HandlerContext(self, definition.map, committed_only=True)
            try:
                ctx.check(definition.map, key)
                return Outcome(run(ctx), self.lsn_committed)
            except SpacegridError as exc:
                return Outcome(None, self.lsn_committed, exc)
        return self._write(op_id, definition.map, key, run)

    def _write(self, op_id: str, map_name: str, key: str, body: Callable[[HandlerContext], Any]) -> Outcome:
        if not isinstance(op_id, str) or not op_id:
            return Outcome(None, self.lsn_assigned, RequestError("a write needs an operation id"))
        durable = map_name in self.write_through_maps  # a retry waits for the store like the first attempt
        pending = self.pending_by_op.get(op_id)
        if pending is not None:
            return Outcome(pending.result, pending.lsn_last, durable=durable)
        if op_id in self.dedup:
            return Outcome(self.dedup[op_id], self.lsn_assigned, durable=durable)
        ctx = HandlerContext(self, map_name)
        try:
            ctx.check(map_name, key)
            result = body(ctx)
            if ctx.staged:
                self._stage(op_id, result, ctx.staged)
                if self.async_maps and all(staged_map in self.async_maps for staged_map, _ in ctx.staged):
                    return Outcome(result, self.lsn_committed)  # async: acknowledged once applied here
                if self.write_through_maps and not durable:
                    durable = any(staged_map in self.write_through_maps for staged_map, _ in ctx.staged)
                return Outcome(result, self.lsn_assigned, durable=durable)
            self.values.encode_bounded(result, self.limits.write_bytes_max, "result")
        except SpacegridError as exc:
            return Outcome(None, self.lsn_assigned, exc)
        return Outcome(result, self.lsn_assigned, durable=durable)

    def _stage(self, op_id: str, result: Any, staged: dict[tuple[str, str], Any]) -> None:
        """Give the staged writes their versions, encode the operation's log entry, and apply it to the overlay."""
        writes: list[tuple[str, str, Entry]] = []
        records: list[list[Any]] = []
        lsn = self.lsn_assigned
        for (map_name, key), value in staged.items():
            lsn += 1
            deleted = value is DELETED
            writes.append((map_name, key, (value, lsn)))
            records.append([map_name, key, lsn, None if deleted else value, deleted])
        encoded = self.values.encode_bounded([op_id, result, records], self.limits.write_bytes_max,
                                             "an operation's writes")
        self.lsn_assigned = lsn
        op = PendingOp(op_id, lsn, result, encoded, writes)
        for map_name, key, entry in writes:
            self.overlay[(map_name, key)] = entry
        self.unsent.append(op)
        self.pending_by_op[op_id] = op

    # ---- group commit --------------------------------------------------------------------------------------

    def take_append(self) -> AppendBatch | None:
        """The next log message to append, or None while one is in flight or nothing waits."""
        if self.inflight is not None or not self.unsent:
            return None
        ops: list[PendingOp] = []
        size_bytes = 0
        records = 0
        while self.unsent:
            op = self.unsent[0]
            if ops and (records + len(op.writes) > self.limits.append_records_max
                        or size_bytes + len(op.encoded) > self.limits.append_bytes_max - 64):
                break
            ops.append(self.unsent.popleft())
            size_bytes += len(op.encoded)
            records += len(op.writes)
        header = [codec.encode(LOG_WRITES), codec.encode(self.log_epoch)]
        payload = codec.encode_array(header + [codec.encode_array([op.encoded for op in ops])])
        self.inflight = AppendBatch(ops[-1].lsn_last, records, payload, ops)
        return self.inflight

    def retract_append(self) -> None:
        """The in-flight append was refused before it was applied (the fence moved for another partition's claim):
        its operations wait to be appended again, first in line, with the same versions."""
        batch = self.inflight
        assert batch is not None
        self.unsent.extendleft(reversed(batch.ops))
        self.inflight = None

    def on_append_committed(self) -> int:
        """The in-flight append was acknowledged: commit its writes; returns the new committed lsn."""
        batch = self.inflight
        assert batch is not None
        assert batch.lsn_last > self.lsn_committed, "sequences only advance"
        for op in batch.ops:
            for map_name, key, entry in op.writes:
                self._commit_write(map_name, key, entry)
                if self.overlay.get((map_name, key)) is entry:
                    del self.overlay[(map_name, key)]
            del self.pending_by_op[op.op_id]
            self._remember(op.op_id, op.result)
        self.lsn_committed = batch.lsn_last
        self.inflight = None
        return self.lsn_committed

    def set_owner_epoch(self, epoch: int) -> None:
        """This PU claimed the partition at `epoch` and replayed up to the claim: later appends carry the epoch."""
        assert epoch >= self.log_epoch, "epochs only grow"
        self.log_epoch = epoch

    @property
    def entry_count(self) -> int:
        return sum(len(entries) for entries in self.maps.values())

    # ---- write-behind --------------------------------------------------------------------------------------

    def dirty_entries(self) -> list[Row]:
        """A consistent snapshot, at lsn_committed, of every committed write the store does not hold yet."""
        snapshot = []
        for (map_name, key), version in self.dirty.items():
            entry = self.maps.get(map_name, EMPTY_MAP).get(key)
            if entry is None:
                snapshot.append(Row(map_name, key, None, version))
            else:
                assert entry[VERSION] == version, "a dirty key's entry has the version it was marked at"
                snapshot.append(Row(map_name, key, entry[VALUE], version))
        return snapshot

    def on_persisted(self, lsn: int) -> None:
        """The store holds every write with version <= lsn: those keys are clean (unless written again since)."""
        self.dirty = {item: version for item, version in self.dirty.items() if version > lsn}

    def versions(self, map_name: str, after_key: str | None, limit: int, pending_max: int) -> dict[str, Any]:
        """Reconciliation: the committed (key, version) pairs of a map that the store should hold, sorted by key
        (a page after after_key; limit 0: only their count and digest), and the writes it may not hold yet."""
        self.space.map_def(map_name)
        entries = self.maps.get(map_name, EMPTY_MAP)
        pending = sorted((key, version) for (name, key), version in self.dirty.items() if name == map_name)
        pending_keys = {key for key, _ in pending}
        clean = sorted((key, entry[VERSION]) for key, entry in entries.items() if key not in pending_keys)
        tracker = self.eviction.get(map_name)
        result: dict[str, Any] = {"lsn": self.lsn_committed, "complete": tracker is None or tracker.complete,
                                  "pending": [list(pair) for pair in pending[:pending_max]],
                                  "pending_count": len(pending)}
        if limit == 0:
            result.update(count=len(clean), digest=digest_of(clean))
        else:
            result["entries"] = [list(pair) for pair in clean if after_key is None or pair[0] > after_key][:limit]
        return result

    def scan(self, map_name: str, after_key: str | None, entries_max: int,
             bytes_max: int) -> tuple[list[tuple[str, bytes, int]], bool]:
        """A snapshot page at lsn_committed: the committed (key, encoded value, version) of a map after after_key,
        sorted by key, at most entries_max of them and about bytes_max (at least one); and whether more follow.
        RequestError for a map that keeps entries in the store only (evicted): a snapshot of memory would miss them."""
        self.space.map_def(map_name)
        tracker = self.eviction.get(map_name)
        if tracker is not None and not tracker.complete:
            raise RequestError(f"map {map_name!r} evicts entries from memory to the store: a snapshot of it from the "
                               "PUs would miss those; read the store, or bound it by TTL only")
        entries = self.maps.get(map_name, EMPTY_MAP)
        keys = sorted(key for key in entries if after_key is None or key > after_key)
        page: list[tuple[str, bytes, int]] = []
        size_bytes = 0
        for key in keys:
            if page and (len(page) >= entries_max or size_bytes >= bytes_max):
                return page, True
            value, version = entries[key]
            page.append((key, value, version))
            size_bytes += len(key) + len(value) + 16
        return page, False

    # ---- eviction and expiry -------------------------------------------------------------------------------

    def evict(self, scan_max: int) -> int:
        """Drop persisted entries from memory where a map is over its bounds or idle entries; returns how many."""
        now_s = self.clock()
        evicted = 0
        for map_name, tracker in self.eviction.items():
            if not tracker.config.evicts:
                continue
            entries = self.maps.get(map_name, {})  # deleted from: never the shared EMPTY_MAP
            dirty = self.dirty
            overlay = self.overlay
            for key in tracker.evictable(now_s, lambda k: (map_name, k) in dirty or (map_name, k) in overlay, scan_max):
                del entries[key]
                tracker.removed(key)
                tracker.complete = False
                evicted += 1
            self.cache[map_name][2] += evicted
        return evicted

    def expired(self, limit: int) -> list[tuple[str, str, int]]:
        """(map, key, version) of entries past their map's ttl_s, for the owner to delete through the log."""
        now_s = self.clock()
        found = []
        for map_name, tracker in self.eviction.items():
            entries = self.maps.get(map_name, EMPTY_MAP)
            for key in tracker.expired(now_s, limit):
                entry = entries.get(key)
                if entry is not None and (map_name, key) not in self.overlay:
                    found.append((map_name, key, entry[VERSION]))
        return found

    def _track_read(self, map_name: str, key: str, found: bool) -> None:
        """Count a read of an eviction-tracked map; a miss that may be in the store raises NotLoaded."""
        tracker = self.eviction[map_name]
        if found:
            tracker.touched(key, self.clock())
            self.cache[map_name][0] += 1
        elif not tracker.complete and key not in tracker.absent and (map_name, key) not in self.dirty:
            # (a dirty key absent from memory was deleted: the store's older row must not come back)
            self.cache[map_name][1] += 1
            raise NotLoaded(f"{map_name}[{key!r}] is not in memory", map_name, key)

    # ---- internals -----------------------------------------------------------------------------------------

    def _commit_write(self, map_name: str, key: str, entry: Entry) -> None:
        entries = self.maps.setdefault(map_name, {})
        if entry[VALUE] is DELETED:
            entries.pop(key, None)
        else:
            entries[key] = entry
        if map_name in self.persisted_maps:
            self.dirty[(map_name, key)] = entry[VERSION]
        tracker = self.eviction.get(map_name)
        if tracker is not None:
            if entry[VALUE] is DELETED:
                tracker.removed(key)
            else:
                tracker.written_at(key, len(key) + len(entry[VALUE]), self.clock())

    def _remember(self, op_id: str, result: Any) -> None:
        self.dedup[op_id] = result
        if len(self.dedup) > self.limits.dedup_window_ops:
            self.dedup.popitem(last=False)

    def _lookup(self, map_name: str, key: str, committed_only: bool = False) -> Entry | None:
        entry = None if committed_only else self.overlay.get((map_name, key))
        if entry is None:
            entry = self.maps.get(map_name, EMPTY_MAP).get(key)
            if map_name in self.eviction:
                self._track_read(map_name, key, entry is not None)
        return None if entry is None or entry[VALUE] is DELETED else entry
