"""The asyncio client: it watches the partition table, sends every request bound for one PU in one message per
event-loop tick, and retries by the one policy of client.retry until the call's deadline."""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spacegrid import protocol
from spacegrid.client.feed import ContinuousQuery, listen
from spacegrid.client.retry import CallRetries
from spacegrid.core.epochs import EpochOwners
from spacegrid.core.feed import Change, Position
from spacegrid.engine.subjects import Names
from spacegrid.engine.transport import Message, Transport
from spacegrid.errors import (
    AttemptTimeout,
    ClosedError,
    NotOwner,
    Overloaded,
    PartitionUnavailable,
    PayloadTooLarge,
    RequestError,
    SpacegridError,
)
from spacegrid.limits import DEFAULT_LIMITS, WIRE_OP_ID_CHARS_MAX, Limits
from spacegrid.partitioning import PartitionTable
from spacegrid.security.access import Access
from spacegrid.space import Space

log = logging.getLogger("spacegrid.client")


@dataclass(frozen=True, slots=True)
class BackupRead:
    """A read from a hot backup: value and version as the backup has them (None if absent there), and how far
    the backup is behind the log."""

    value: Any
    version: int | None
    lag_records: int
    lag_s: float


@dataclass(slots=True)
class _Batch:
    """Requests sent to one PU in one message (or its chunks), answered by one or more reply messages."""

    subject: str
    req_ids: list[int]
    unanswered: int
    timer: asyncio.TimerHandle


class Client:
    """Talk to a running space. `async with await Client.connect(space, url) as client: ...`"""

    def __init__(self, space: Space, limits: Limits) -> None:
        self.space = space
        self.limits = limits
        self.names = Names(space.name)
        self.table = PartitionTable.empty(space.partitions)
        self.epochs = EpochOwners(space.partitions)  # owners by epoch of the tables seen: change feeds check writers
        self.client_id = secrets.token_hex(4)
        self._op_ids = itertools.count(1)
        self._req_ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._outgoing: dict[str, list[tuple[int, bytes, float]]] = {}
        self._batch_ids = itertools.count(1)
        self._batches: dict[int, _Batch] = {}
        self._in_flight: dict[str, int] = {}  # batches sent to each PU subject and not fully answered
        self._flush_scheduled = False
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self.counters = {"requests": 0, "messages": 0, "retries": 0}

    @classmethod
    async def connect(cls, space: Space, nats_url: str, limits: Limits = DEFAULT_LIMITS, *,
                      creds: str | Path | None = None, tls_ca: str | Path | None = None,
                      tls_cert: str | Path | None = None, tls_key: str | Path | None = None,
                      data_dir: str | Path | None = None, access: Access | None = None) -> Client:
        """Connect to the space at `nats_url`. Credentials: `access`, else the files given (`creds`, `tls_*`),
        else SPACEGRID_CREDS / SPACEGRID_TLS_* variables, else a local grid's `data_dir`/secrets/client.creds.
        Raises AccessDenied when NATS refuses them, GridUnavailable when it can't be reached in time."""
        given = access or Access(*(None if f is None else Path(f) for f in (creds, tls_ca, tls_cert, tls_key)))
        client = cls(space, limits)
        await client._start(nats_url, Access.resolve(given, None if data_dir is None else Path(data_dir), "client"))
        return client

    async def _start(self, nats_url: str, access: Access) -> None:
        self.transport = await Transport.connect(nats_url, f"client:{self.client_id}",
                                                 connect_timeout_s=self.limits.connect_timeout_s, access=access)
        self.coord = await self.transport.coordination(self.names)
        table, _ = await self.coord.read_table(self.space.partitions)
        self.table = table
        self.epochs.observe(table)
        self._inbox = self.transport.new_inbox()
        self._sub = await self.transport.subscribe(f"{self._inbox}.*", self._on_reply)
        self._tasks.append(await self.coord.watch_table(self._on_table))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for batch in self._batches.values():
            batch.timer.cancel()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ClosedError("client closed"))
        await self.transport.drain()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def _on_table(self, table: PartitionTable) -> None:
        if table.version > self.table.version:
            self.table = table
            self.epochs.observe(table)
            self._fail_batches_to_departed(set(table.owners))
        elif table.version < self.table.version:
            log.info("ignored table v%d older than v%d", table.version, self.table.version)

    # ---- the API -------------------------------------------------------------------------------------------

    async def get(self, map: str, key: str, deadline_s: float | None = None) -> Any:
        """The value of `key` in `map`, or None."""
        found = await self._call(self.space.partition_of(map, key), protocol.OP_GET, map, key, deadline_s=deadline_s)
        return None if found is None else found[0]

    async def get_entry(self, map: str, key: str, deadline_s: float | None = None) -> tuple[Any, int] | None:
        """(value, version) of `key` in `map`, or None."""
        found = await self._call(self.space.partition_of(map, key), protocol.OP_GET, map, key, deadline_s=deadline_s)
        return None if found is None else (found[0], found[1])

    async def get_from_backup(self, map: str, key: str, deadline_s: float | None = None) -> BackupRead:
        """Read `key` from a hot backup of its partition (from the owner where the space keeps none): it may be
        behind the owner, and says by how much."""
        partition = self.space.partition_of(map, key)
        if not self.table.backups_of(partition):
            entry = await self.get_entry(map, key, deadline_s)
            return BackupRead(None if entry is None else entry[0], None if entry is None else entry[1], 0, 0.0)
        value, version, lag_records, lag_s = await self._call(partition, protocol.OP_GET_BACKUP, map, key,
                                                              deadline_s=deadline_s)
        return BackupRead(value, version, int(lag_records), float(lag_s))

    async def get_many(self, map: str, keys: list[str], deadline_s: float | None = None) -> dict[str, Any]:
        """Values of the keys that exist; one round trip per owner PU."""
        values = await asyncio.gather(*(self.get(map, key, deadline_s) for key in keys))
        return {key: value for key, value in zip(keys, values) if value is not None}

    async def put(self, map: str, key: str, value: Any, expected_version: int | None = None,
                  deadline_s: float | None = None, op_id: str | None = None) -> int:
        """Store `value`; with expected_version, only if the entry is at that version (0: absent). Returns the new
        version. `op_id`: an operation id of the caller's own (see `execute`)."""
        if value is None:
            raise RequestError("None can't be stored as a value: delete the key instead")
        return int(await self._call(self.space.partition_of(map, key), protocol.OP_PUT, map, key, value,
                                    expected_version, write=True, deadline_s=deadline_s, op_id=op_id))

    async def delete(self, map: str, key: str, expected_version: int | None = None,
                     deadline_s: float | None = None, op_id: str | None = None) -> bool:
        """Delete; True if the key existed. `op_id`: an operation id of the caller's own (see `execute`)."""
        return bool(await self._call(self.space.partition_of(map, key), protocol.OP_DELETE, map, key, None,
                                     expected_version, write=True, deadline_s=deadline_s, op_id=op_id))

    async def execute(self, handler: str, key: str, args: Any = None, deadline_s: float | None = None,
                      op_id: str | None = None) -> Any:
        """Run a handler on the PU owning `key`, atomically with every other operation on its partition.
        Every attempt of a write carries one operation id, so the client's own retries apply it at most once. With
        `op_id` (at most WIRE_OP_ID_CHARS_MAX characters, unique per operation), the caller names it: a call
        repeated with the same id for the same key, from this client or another, even after a restart, is answered
        with the first call's result instead of running again, as long as its partition's dedup window
        (limits.dedup_window_ops, the most recent operations) still holds it."""
        definition = self.space.handler_def(handler)
        return await self._call(self.space.partition_of(definition.map, key), protocol.OP_EXECUTE, handler, key, args,
                                write=not definition.read_only, deadline_s=deadline_s, op_id=op_id)

    async def query(self, name: str, args: Any = None, deadline_s: float | None = None) -> Any:
        """Run a read-only query on every partition and merge the results on this side."""
        definition = self.space.query_def(name)
        results = await asyncio.gather(*(
            self._call(partition, protocol.OP_QUERY, name, "", args, deadline_s=deadline_s)
            for partition in range(self.space.partitions)
        ))
        return definition.merge(list(results))

    async def partition_versions(self, partition: int, map: str, after_key: str | None = None, limit: int = 0,
                                 deadline_s: float | None = None) -> dict[str, Any]:
        """Reconciliation: from the owner of `partition`, the (key, version) pairs of `map` the store should hold,
        sorted, a page of `limit` after `after_key` (limit 0: their count and digest instead), the writes the store
        may not hold yet ("pending"), and whether every entry is in memory ("complete")."""
        return dict(await self._call(partition, protocol.OP_VERSIONS, map, "", after_key, limit, deadline_s=deadline_s))

    async def log_position(self) -> Position:
        """The log's end now: `listen(from_=...)` it to get every change committed after this call."""
        return Position((await self.transport.log_bounds(self.names))[1])

    def listen(self, map: str | None, key: str | None = None, where: Callable[[str, Any], bool] | None = None,
               from_: str | int | Position | None = None, expiries: bool = True) -> AsyncIterator[Change]:
        """The committed changes of `map` (or of one `key`) after position `from_` (None: from now; "earliest"),
        as an async iterator read from the partition logs: see client.feed.listen."""
        return listen(self, map, key, where, from_, expiries)

    async def continuous_query(self, map: str, where: Callable[[str, Any], bool] | None = None,
                               on_change: Callable[[Change], None] | None = None) -> ContinuousQuery:
        """A local, always-current view of the entries of `map` that `where(key, value)` accepts: a snapshot
        joined to the change feed without a gap (client.feed.ContinuousQuery); close() it when done."""
        return await ContinuousQuery.start(self, map, where, on_change)

    # ---- routing and retries -------------------------------------------------------------------------------

    async def _call(self, partition: int, op: int, name: str, key: str, arg1: Any = None, arg2: Any = None,
                    write: bool = False, deadline_s: float | None = None, op_id: str | None = None) -> Any:
        """Send until answered, by the policy of client.retry: one operation id for every attempt of a write (the
        caller's `op_id`, or one of this client's). `partition` comes from Space.partition_of, which checked the
        key. The retry state is made at the first failure: most calls are answered at the first attempt."""
        if self._closed:
            raise ClosedError("client closed")
        if op_id is None:
            op_id = f"{self.client_id}:{next(self._op_ids)}" if write else ""
        elif not isinstance(op_id, str) or not 0 < len(op_id) <= WIRE_OP_ID_CHARS_MAX or not write:
            raise RequestError(f"op_id is a string of 1 to {WIRE_OP_ID_CHARS_MAX} characters (limits."
                               "WIRE_OP_ID_CHARS_MAX), for writes only")
        started_s = time.monotonic()
        retries: CallRetries | None = None
        while True:
            owner = self._route(partition, op)
            if owner is None:
                error: SpacegridError = PartitionUnavailable(
                    f"partition {partition} has no member to ask in table v{self.table.version}: nothing was sent")
            else:
                req_id = next(self._req_ids)
                payload = protocol.request(req_id, op, partition, name, key, arg1, arg2, op_id, self.space.values)
                if len(payload) > self.limits.request_payload_bytes_max:
                    raise PayloadTooLarge(
                        f"request of {len(payload)} bytes exceeds limits.request_payload_bytes_max "
                        f"({self.limits.request_payload_bytes_max})")
                timeout_s = CallRetries.first_attempt_timeout_s(self.limits, deadline_s) if retries is None \
                    else retries.attempt_timeout_s(time.monotonic())
                try:
                    return await self._send(self.names.pu_subject(owner), req_id, payload, timeout_s)
                except SpacegridError as exc:
                    error = exc
            if retries is None:
                retries = CallRetries.start(self.limits, started_s, deadline_s, f"partition {partition}")
            delay_s = retries.after_failure(error, time.monotonic())  # raises what ends the call
            self.counters["retries"] += 1
            await asyncio.sleep(delay_s)

    def _route(self, partition: int, op: int) -> str | None:
        """The member to ask: the owner, or for a backup read the first backup."""
        if op == protocol.OP_GET_BACKUP:
            backups = self.table.backups_of(partition)
            return backups[0] if backups else None
        return self.table.owner(partition)

    def _send(self, subject: str, req_id: int, payload: bytes, timeout_s: float) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if len(self._pending) >= self.limits.pending_requests_max:
            future.set_exception(Overloaded(
                f"more than {self.limits.pending_requests_max} requests in flight (limits.pending_requests_max): "
                "back off"))
            return future
        self._pending[req_id] = future
        self.counters["requests"] += 1
        self._outgoing.setdefault(subject, []).append((req_id, payload, timeout_s))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        """Send what was queued: one message per PU (chunked by size), each with its own reply subject so that a
        "no responders" status fails exactly its requests at once. A PU with `client_batches_per_pu_eager` batches
        not fully answered gets a new one only once `client_batch_requests_min` requests have gathered for it, and
        none past `client_batches_per_pu_max`: its requests gather until one is answered (group commit on the client
        side: the requests per message do not fall as a client's load splits across more PUs, and one PU under a
        heavy load still gets its work pipelined)."""
        self._flush_scheduled = False
        outgoing, self._outgoing = self._outgoing, {}
        loop = asyncio.get_running_loop()
        messages: list[tuple[str, bytes, str]] = []
        for subject, batch in outgoing.items():
            in_flight = self._in_flight.get(subject, 0)
            if not self._may_send(in_flight, len(batch)):
                self._outgoing[subject] = batch  # sent when enough gathered or one of its batches is answered
                continue
            self._in_flight[subject] = in_flight + 1
            batch_no = next(self._batch_ids)
            req_ids = [req_id for req_id, _, _ in batch]
            timer = loop.call_later(min(timeout_s for _, _, timeout_s in batch), self._expire, batch_no)
            self._batches[batch_no] = _Batch(subject, req_ids, len(req_ids), timer)
            reply_to = f"{self._inbox}.{batch_no}"
            for message in protocol.chunks([payload for _, payload, _ in batch], self.limits.request_payload_bytes_max,
                                          self.limits.requests_per_message_max):
                messages.append((subject, message, reply_to))
        self.counters["messages"] += len(messages)
        loop.create_task(self._publish(messages))  # one task a tick, whatever the number of PUs

    def _may_send(self, in_flight: int, requests: int) -> bool:
        limits = self.limits
        return in_flight < limits.client_batches_per_pu_eager or (
            in_flight < limits.client_batches_per_pu_max and requests >= limits.client_batch_requests_min)

    async def _publish(self, messages: list[tuple[str, bytes, str]]) -> None:
        for subject, message, reply_to in messages:
            try:
                await self.transport.publish(subject, message, reply=reply_to)
            except Exception as exc:  # reconnecting or closed: the attempt timer retries
                log.debug("publish to %s failed: %s", subject, exc)

    def _expire(self, batch_no: int) -> None:
        self._fail_batch(batch_no, AttemptTimeout("no reply within the attempt timeout"))

    def _fail_batches_to_departed(self, owners: set[str | None]) -> None:
        """Requests in flight to a PU that the new table no longer names won't be answered: retry them now
        (safe for writes too: the operation id makes a retry apply at most once)."""
        live_subjects = {self.names.pu_subject(owner) for owner in owners if owner is not None}
        for batch_no, batch in list(self._batches.items()):
            if batch.subject not in live_subjects:
                self._fail_batch(batch_no, AttemptTimeout("the PU this was sent to left the partition table"))

    def _fail_batch(self, batch_no: int, error: SpacegridError) -> None:
        batch = self._batches.get(batch_no)
        if batch is None:
            return
        for req_id in batch.req_ids:
            future = self._pending.pop(req_id, None)
            if future is not None and not future.done():
                future.set_exception(error)
        self._complete(batch_no)

    def _complete(self, batch_no: int) -> None:
        """Every request of the batch is answered (or failed): its PU may get the requests gathered meanwhile."""
        batch = self._batches.pop(batch_no)
        batch.timer.cancel()
        self._in_flight[batch.subject] -= 1
        assert self._in_flight[batch.subject] >= 0, "batches are completed once each"
        if batch.subject in self._outgoing and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _on_reply(self, msg: Message) -> None:
        if not msg.data:
            status = (msg.headers or {}).get("Status", "")
            self._fail_batch(int(msg.subject.rpartition(".")[2]),
                             NotOwner(f"no PU listens there (NATS status {status or 'empty'}); the owner is gone"))
            return
        try:
            replies = protocol.decode_replies(msg.data, self.space.values)  # a reply's values typed
        except SpacegridError as exc:
            log.warning("undecodable reply: %s", exc)
            return
        if not isinstance(replies, list):
            log.warning("a reply message is not a list of replies; ignored")
            return
        batch_no = int(msg.subject.rpartition(".")[2])
        batch = self._batches.get(batch_no)
        if batch is not None:
            batch.unanswered -= len(replies)
            if batch.unanswered <= 0:
                self._complete(batch_no)
        pending = self._pending
        for item in replies:
            try:
                reply = protocol.decode_reply(item)
            except SpacegridError as exc:
                log.warning("undecodable reply: %s", exc)
                continue
            future = pending.pop(reply.req_id, None)
            if future is None or future.done():
                if isinstance(reply, protocol.Refused) and reply.req_id == protocol.MALFORMED_REQ_ID:
                    log.warning("a PU refused a whole message: %s", reply.error)
                continue
            if isinstance(reply, protocol.Answered):
                future.set_result(reply.payload)
            else:
                future.set_exception(reply.error)
