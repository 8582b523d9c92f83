"""The grid's events in a bounded JetStream stream of their own: what PUs emit (joins, leaves, members declared dead,
tables with partitions moved, failovers and how long they took, fences, store outages, a missing log), and reading
them back, from a time on, and following new ones."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from spacegrid.engine.changelog import delivery_position
from spacegrid.engine.subjects import Names
from spacegrid.limits import EVENT_BYTES_MAX, EVENTS_KEPT_MAX, EVENTS_KEPT_S, EVENTS_PENDING_MAX

log = logging.getLogger("spacegrid.events")

EVENT_KINDS = ("member_joined", "member_left", "member_dead", "member_rejoined", "table", "partition_recovered",
               "fenced", "store_unavailable", "store_available", "log_missing", "log_restored", "records_refused",
               "claim_refused", "partition_poisoned")


async def ensure_events_stream(js: JetStreamContext, names: Names, replicas: int) -> None:
    """Create the space's events stream if it is missing (bounded by count and age, the oldest dropped first)."""
    try:
        await js.stream_info(names.events_stream)
        return
    except NotFoundError:
        pass
    config = api.StreamConfig(name=names.events_stream, subjects=[names.events_wildcard],
                              storage=api.StorageType.FILE, num_replicas=replicas, max_msgs=EVENTS_KEPT_MAX,
                              max_age=EVENTS_KEPT_S, max_msg_size=EVENT_BYTES_MAX, discard=api.DiscardPolicy.OLD)
    try:
        await js.add_stream(config)
    except BadRequestError as exc:
        if "already in use" not in str(exc):
            raise


def encode_event(kind: str, member: str, at_s: float, fields: dict[str, Any]) -> bytes:
    """An event as JSON (readable with any NATS tool), cut to EVENT_BYTES_MAX by dropping its details."""
    assert kind in EVENT_KINDS, f"unknown event kind {kind!r}"
    event = {"at": round(at_s, 3), "kind": kind, "member": member, **fields}
    data = json.dumps(event, separators=(",", ":"), default=str).encode()
    if len(data) > EVENT_BYTES_MAX:
        data = json.dumps({"at": event["at"], "kind": kind, "member": member, "truncated": True}).encode()
    return data


class EventSink(Protocol):
    def emit(self, kind: str, **fields: Any) -> None: ...


class NoEvents:
    """Where events go when nothing records them (parts built without a PU, as in tests of one component)."""

    def emit(self, kind: str, **fields: Any) -> None:
        assert kind in EVENT_KINDS, f"unknown event kind {kind!r}"


NO_EVENTS = NoEvents()


class EventEmitter:
    """`emit(kind, **fields)` from the PU's loop never waits: events queue (at most EVENTS_PENDING_MAX, then they
    are dropped and counted) and one task publishes them, fire and forget, into the events stream."""

    def __init__(self, nc: Client, names: Names, member_id: str) -> None:
        self.nc = nc
        self.names = names
        self.member_id = member_id
        self.counters = {"events": 0, "events_dropped": 0}
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(EVENTS_PENDING_MAX)
        self._task: asyncio.Task[None] | None = None

    def emit(self, kind: str, **fields: Any) -> None:
        try:
            self._queue.put_nowait((kind, encode_event(kind, self.member_id, time.time(), fields)))
        except asyncio.QueueFull:
            self.counters["events_dropped"] += 1
            return
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._publish(), name="events")

    async def _publish(self) -> None:
        while True:
            kind, data = await self._queue.get()
            try:
                await self.nc.publish(self.names.event_subject(kind), data)
                self.counters["events"] += 1
            except Exception as exc:  # closed or reconnecting: an event is worth less than the PU's work
                self.counters["events_dropped"] += 1
                log.debug("event %s not published: %s", kind, exc)

    async def stop(self) -> None:
        """Publish what is queued (bounded by the queue), then stop."""
        if self._task is None:
            return
        for _ in range(EVENTS_PENDING_MAX + 1):  # each pass lets the task publish one (or fail it: counted)
            if self._queue.empty() or self.nc.is_closed:
                break
            await asyncio.sleep(0)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def read_events(js: JetStreamContext, names: Names, since_s: float | None, follow: bool,
                      idle_s: float) -> AsyncIterator[dict[str, Any]]:
    """The events from `since_s` (a Unix time; None: the oldest kept), in order; with `follow`, then new ones as they
    come, else until none arrives for `idle_s` after the last one the stream held when reading began."""
    try:
        info = await js.stream_info(names.events_stream)
    except NotFoundError:
        return
    last_seq = int(info.state.last_seq)
    if not follow and last_seq == 0:
        return
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def on_message(msg: Any) -> None:
        await queue.put(msg)

    if since_s is None:
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL)
    else:
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_TIME,
                                    opt_start_time=time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(since_s)))
    sub = await js.subscribe(names.events_wildcard, stream=names.events_stream, cb=on_message,
                             ordered_consumer=True, config=config)
    try:
        while True:
            try:
                msg = await asyncio.wait_for(queue.get(), None if follow else idle_s)
            except asyncio.TimeoutError:
                return  # nothing since idle_s: the events the stream held are all delivered
            try:
                event = json.loads(msg.data)
            except ValueError:
                continue
            if isinstance(event, dict):
                yield event
            if not follow and delivery_position(msg.reply)[0] >= last_seq:
                return
    finally:
        await sub.unsubscribe()
