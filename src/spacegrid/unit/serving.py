"""Serving requests on one PU: decode and validate each message, answer reads from committed state, stage writes
for group commit, read evicted keys through from the store, and refuse work past the PU's bounds."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from spacegrid import protocol
from spacegrid.core.partition import Outcome
from spacegrid.engine.changelog import missing_log_message
from spacegrid.engine.transport import Message, Transport
from spacegrid.errors import (
    LogMissing,
    NotLoaded,
    NotOwner,
    Overloaded,
    PartitionUnavailable,
    RequestError,
    SpacegridError,
    StoreError,
    StoreUnavailable,
)
from spacegrid.limits import FEED_SNAPSHOT_PAGE_BYTES_MAX, FEED_SNAPSHOT_PAGE_ENTRIES_MAX, Limits
from spacegrid.space import Space
from spacegrid.store.base import Store
from spacegrid.unit.appender import Appender
from spacegrid.unit.backups import Backups
from spacegrid.unit.replies import Replies
from spacegrid.unit.slot import Slot

log = logging.getLogger("spacegrid.serving")

REFUSAL_LOG_INTERVAL_S = 1.0  # at most one line a second about malformed messages (all are counted)
PING = b"\x90"  # an empty batch: the PU answers at once; NATS answers "no responders" for a PU that is gone


class Server:
    """The request path: `on_message` is the callback of the PU's subject and of its partitions' subjects."""

    def __init__(self, space: Space, limits: Limits, member_id: str, transport: Transport, replies: Replies,
                 appender: Appender, backups: Backups, store: Store | None,
                 slots: Mapping[int, Slot], lease_valid: Callable[[], bool], table_version: Callable[[], int]) -> None:
        self.space = space
        self.limits = limits
        self.member_id = member_id
        self.transport = transport
        self.replies = replies
        self.appender = appender
        self.backups = backups
        self.store = store
        self.slots = slots  # the driver's: every partition's current attempt
        self.lease_valid = lease_valid
        self.table_version = table_version
        self.loading = 0  # requests waiting for a read-through, on every slot together
        self.counters = {"requests": 0, "messages": 0, "overloaded": 0, "bad_requests": 0}
        self._refusal_logged_s = -REFUSAL_LOG_INTERVAL_S

    async def on_message(self, msg: Message) -> None:
        self.counters["messages"] += 1
        reply_to = msg.reply
        try:
            requests = protocol.decode_message(msg.data, self.limits, self.space.values)  # within limits.py's bounds
        except SpacegridError as exc:
            self.counters["bad_requests"] += 1
            now_s = time.monotonic()
            if now_s - self._refusal_logged_s >= REFUSAL_LOG_INTERVAL_S:  # a flood of bad input: a line a second
                log.warning("refused a message on %s: %s (%d refused in all)", msg.subject, exc,
                            self.counters["bad_requests"])
                self._refusal_logged_s = now_s
            self.replies.error(reply_to, protocol.MALFORMED_REQ_ID, exc)
            return
        if not requests:
            if reply_to:
                await self.transport.publish(reply_to, PING)
            return
        reads_ok = self.lease_valid()
        received_s = time.monotonic()
        touched: set[Slot] = set()
        for raw in requests:
            slot = self.serve(raw, reply_to, reads_ok, received_s)
            if slot is not None:
                touched.add(slot)
        for slot in touched:
            self.appender.schedule(slot)

    def serve(self, raw: Any, reply_to: str, reads_ok: bool, received_s: float) -> Slot | None:
        """Serve one request that arrived at `received_s` (monotonic); returns the slot if it staged writes that
        need an append."""
        self.counters["requests"] += 1
        try:
            request = protocol.decode_request(raw, self.space.partitions)
        except RequestError as exc:
            self.counters["bad_requests"] += 1
            self.replies.error(reply_to, protocol.request_id_of(raw), exc)
            return None
        try:
            return self._dispatch(request, raw, reply_to, reads_ok, received_s)
        except SpacegridError as exc:
            if isinstance(exc, Overloaded):
                self.counters["overloaded"] += 1
            self.replies.error(reply_to, request.req_id, exc)
            return None

    def _dispatch(self, request: protocol.Request, raw: Any, reply_to: str, reads_ok: bool,
                  received_s: float) -> Slot | None:
        if isinstance(request, protocol.GetBackup):
            self._serve_backup_read(reply_to, request)
            self._answered("get_backup", received_s)
            return None
        slot = self._owned(request.partition)
        if not reads_ok and (isinstance(request, protocol.READS) or isinstance(request, protocol.Execute)
                             and self.space.handler_def(request.handler).read_only):
            raise PartitionUnavailable(f"PU {self.member_id}'s read lease has expired: it can't vouch that it "
                                       "still owns the partition")
        state = slot.state
        if isinstance(request, protocol.Get):
            if not state.holds(request.map, request.key):  # an entry in memory was routed here when written
                self._check_route(request.map, request.key, request.partition)
            try:
                self.replies.send(reply_to, protocol.entry_reply(request.req_id,
                                                                 state.get_encoded(request.map, request.key)))
            except NotLoaded as missing:
                self._read_through(slot, missing, raw, reply_to, received_s)
                return None
            self._answered("get", received_s)
            return None
        if isinstance(request, protocol.Query):
            self.replies.send(reply_to, protocol.ok_reply(request.req_id, state.query(request.query, request.args),
                                                          self.space.values))
            self._answered("query", received_s)
            return None
        if isinstance(request, protocol.Versions):
            page = state.versions(request.map, request.after_key, min(request.limit, self.limits.versions_page_max),
                                  self.limits.versions_page_max)
            self.replies.send(reply_to, protocol.ok_reply(request.req_id, {**page, "persisted_lsn": slot.persist.lsn}))
            self._answered("versions", received_s)
            return None
        if isinstance(request, protocol.Scan):
            self._serve_scan(slot, reply_to, request)
            self._answered("scan", received_s)
            return None
        self._check_capacity(slot)
        if isinstance(request, protocol.Put):
            outcome = state.put(request.op_id, request.map, request.key, request.value, request.expected_version)
            outcome.kind = "put"
        elif isinstance(request, protocol.Delete):
            outcome = state.delete(request.op_id, request.map, request.key, request.expected_version)
            outcome.kind = "delete"
        else:
            outcome = state.execute(request.op_id, request.handler, request.key, request.args)
            outcome.kind = "call"
        outcome.received_s = received_s
        return self._settle(slot, outcome, raw, reply_to, request.req_id)

    def _answered(self, kind: str, received_s: float) -> None:
        self.replies.latencies.observe(kind, time.monotonic() - received_s)

    def _settle(self, slot: Slot, outcome: Outcome, raw: Any, reply_to: str, req_id: int) -> Slot | None:
        if isinstance(outcome.error, NotLoaded):
            self._read_through(slot, outcome.error, raw, reply_to, outcome.received_s)
            return None
        if outcome.wait_lsn <= slot.state.lsn_committed:
            self.appender.answer(slot, reply_to, req_id, outcome)
            return slot if slot.state.unsent else None  # an async write still needs its append
        self.appender.wait(slot, outcome.wait_lsn, reply_to, req_id, outcome)
        return slot

    def _owned(self, partition: int) -> Slot:
        slot = self.slots.get(partition)
        if slot is None or not slot.serving:
            raise (NotOwner if slot is None else PartitionUnavailable)(
                f"PU {self.member_id} does not serve partition {partition} (table v{self.table_version()})")
        return slot

    def _check_capacity(self, slot: Slot) -> None:
        """Refuse a write before applying it when this PU's queues are full: nothing was applied, the client
        backs off and retries."""
        if self.appender.guard.missing:
            raise LogMissing(missing_log_message(self.appender.changelog.names))
        limits = self.limits
        if (self.appender.waiting >= limits.waiters_max or self.replies.pending >= limits.replies_pending_max
                or len(slot.state.unsent) >= limits.partition_backlog_ops_max):
            raise Overloaded(f"PU {self.member_id} is at its bounds ({self.appender.waiting} replies waiting for "
                             f"commits, {self.replies.pending} unsent, {len(slot.state.unsent)} writes not appended "
                             f"on partition {slot.partition}): back off and retry")

    def _read_through(self, slot: Slot, missing: NotLoaded, raw: Any, reply_to: str, received_s: float) -> None:
        """The request needs a key evicted from memory: read it from the store, then serve the request again
        (requests for a key being read wait behind the first, in order)."""
        if self.loading >= self.limits.waiters_max:
            self.counters["overloaded"] += 1
            self.replies.error(reply_to, protocol.request_id_of(raw),
                               Overloaded(f"PU {self.member_id} has {self.loading} reads from the store in flight: "
                                          "back off and retry"))
            return
        self.loading += 1
        item = (missing.map_name, missing.key)
        waiting = slot.loading.get(item)
        if waiting is not None:
            waiting.append((raw, reply_to, received_s))
            return
        slot.loading[item] = [(raw, reply_to, received_s)]
        asyncio.get_running_loop().create_task(self._load_key(slot, item))

    async def _load_key(self, slot: Slot, item: tuple[str, str]) -> None:
        assert self.store is not None, "only maps with a store evict"
        map_name, key = item
        failure: SpacegridError | None = None
        try:
            row = await self.store.load_key(map_name, key)
            slot.state.load_key(map_name, key, None if row is None or row.value is None else (row.value, row.version))
        except StoreUnavailable as exc:
            failure = PartitionUnavailable(f"{map_name}[{key!r}] is not in memory and the store is unavailable: {exc}")
        except StoreError as exc:  # the store refused the read itself: the waiters get it, none is left waiting
            failure = exc
        waiting = slot.loading.pop(item, [])
        self.loading -= len(waiting)
        touched: set[Slot] = set()
        reads_ok = self.lease_valid()
        for raw, reply_to, received_s in waiting:
            if failure is not None:
                self.replies.error(reply_to, protocol.request_id_of(raw), failure)
                continue
            served = self.serve(raw, reply_to, reads_ok, received_s)
            if served is not None:
                touched.add(served)
        for served in touched:
            self.appender.schedule(served)

    def _serve_scan(self, slot: Slot, reply_to: str, request: protocol.Scan) -> None:
        """A page of a snapshot, with what a change feed joins it on: the partition's committed version, and the
        log position every later write of it comes after (its last append, or its claim; idle: none is staged, so
        any later one is appended after this reply)."""
        state = slot.state
        page, more = state.scan(request.map, request.after_key, min(request.limit, FEED_SNAPSHOT_PAGE_ENTRIES_MAX),
                                FEED_SNAPSHOT_PAGE_BYTES_MAX)
        idle = not state.unsent and state.inflight is None
        self.replies.send(reply_to, protocol.scan_reply(request.req_id, page, state.lsn_committed,
                                                        max(slot.last_seq, slot.claim_seq), idle, more))

    def _serve_backup_read(self, reply_to: str, request: protocol.GetBackup) -> None:
        backup = self.backups.held.get(request.partition)
        if backup is None or not backup.covered:
            raise NotOwner(f"PU {self.member_id} holds no backup of partition {request.partition} "
                           f"(table v{self.table_version()})")
        self._check_route(request.map, request.key, request.partition)
        lag_records, lag_s = self.backups.lag_of(backup, time.monotonic())
        try:
            entry = backup.state.get_encoded(request.map, request.key)
        except NotLoaded:
            raise PartitionUnavailable(f"{request.map}[{request.key!r}] was evicted from the backup's memory: "
                                       "read the owner") from None
        self.replies.send(reply_to, protocol.backup_entry_reply(request.req_id, entry, lag_records, round(lag_s, 6)))

    def _check_route(self, map_name: str, key: str, partition: int) -> None:
        if self.space.partition_of(map_name, key) != partition:
            raise RequestError(f"key {key!r} of {map_name!r} does not belong to partition {partition}")
