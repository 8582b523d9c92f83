"""The messaging seam: the one object through which code outside engine/ talks to NATS (publish, subscribe,
probe, JetStream changelog and coordination)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.js.errors import NotFoundError

from spacegrid.engine.changelog import Changelog, ensure_stream, recreate_stream
from spacegrid.engine.connection import connect
from spacegrid.engine.coordination import NOT_READY, Coordination, unplaced
from spacegrid.engine.events import EventEmitter, ensure_events_stream, read_events
from spacegrid.engine.logreader import log_bounds, read_log
from spacegrid.engine.subjects import Names
from spacegrid.errors import GridUnavailable


class Message(Protocol):
    """A message as handlers receive it (nats-py's Msg has exactly these attributes)."""

    subject: str
    data: bytes
    reply: str
    headers: dict[str, str] | None


class Subscription(Protocol):
    async def unsubscribe(self) -> None: ...


MessageHandler = Callable[[Any], Awaitable[None]]


class _answered:
    """`async with _answered():` turns JetStream not answering yet (electing leaders, a new cluster whose meta
    leader has not yet heard from enough peers to place a replicated stream) into GridUnavailable: retry later."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, NOT_READY):
            raise GridUnavailable(f"JetStream did not answer: {exc!r}") from exc
        if exc is not None and unplaced(exc):
            raise GridUnavailable("JetStream found no peers to place a replicated stream on: a cluster still forming "
                                  "(retried), or fewer JetStream nodes than the grid's replicas") from exc


@dataclass(frozen=True, slots=True)
class TransportStatistics:
    """What crossed the connection since it opened."""

    in_msgs: int
    out_msgs: int
    in_bytes: int
    out_bytes: int
    reconnects: int


class Transport:
    """A NATS connection with JetStream, behind a small typed interface. `await Transport.connect(url, name)`."""

    def __init__(self, nc: NatsClient, jetstream_timeout_s: float = 2.0) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=jetstream_timeout_s)
        self._lost_at_s: float | None = None

    @classmethod
    async def connect(cls, url: str, name: str, jetstream_timeout_s: float = 2.0, **options: Any) -> Transport:
        """Connect (bounded; raises GridUnavailable); `options` go to engine.connection.connect."""
        transport: Transport | None = None

        async def on_disconnect() -> None:
            if transport is not None and transport._lost_at_s is None:
                transport._lost_at_s = time.monotonic()

        async def on_reconnect() -> None:
            if transport is not None:
                transport._lost_at_s = None

        nc = await connect(url, name, on_disconnect=on_disconnect, on_reconnect=on_reconnect, **options)
        transport = cls(nc, jetstream_timeout_s)
        return transport

    # ---- core messaging ------------------------------------------------------------------------------------

    def new_inbox(self) -> str:
        return str(self._nc.new_inbox())

    async def publish(self, subject: str, data: bytes, reply: str = "", headers: dict[str, str] | None = None) -> None:
        await self._nc.publish(subject, data, reply=reply, headers=headers)

    async def subscribe(self, subject: str, handler: MessageHandler) -> Subscription:
        return await self._nc.subscribe(subject, cb=handler)  # type: ignore[no-any-return]

    async def probe(self, subject: str, payload: bytes, timeout_s: float) -> bool | None:
        """Does anyone listen on `subject`? True: answered; False: NATS says no responders; None: no answer in
        time (says nothing)."""
        try:
            await self._nc.request(subject, payload, timeout=timeout_s)
        except NoRespondersError:
            return False
        except Exception:  # a timeout, or a connection in trouble: unknown
            return None
        return True

    def statistics(self) -> TransportStatistics:
        stats = self._nc.stats
        return TransportStatistics(int(stats["in_msgs"]), int(stats["out_msgs"]), int(stats["in_bytes"]),
                                   int(stats["out_bytes"]), int(stats["reconnects"]))

    def disconnected_for_s(self) -> float:
        """How long the connection to NATS has been lost; 0.0 while connected."""
        return 0.0 if self._lost_at_s is None else time.monotonic() - self._lost_at_s

    # ---- JetStream ------------------------------------------------------------------------------------------

    async def wait_jetstream(self, names: Names, timeout_s: float, probe_timeout_s: float) -> None:
        """Until JetStream answers for the space's streams (after a restart a cluster first elects its leaders),
        probing with short requests so that its first answer is not missed behind a long request timeout;
        GridUnavailable after `timeout_s`."""
        js = self._nc.jetstream(timeout=probe_timeout_s)
        streams = (names.stream, f"KV_{names.members_bucket}", f"KV_{names.table_bucket}")
        deadline_s = time.monotonic() + timeout_s
        while True:
            try:
                await js.account_info()
                for stream in streams:
                    try:
                        await js.stream_info(stream)
                    except NotFoundError:
                        pass  # not created yet: the meta leader answered, which is what counts
                return
            except NOT_READY as exc:
                if time.monotonic() > deadline_s:
                    raise GridUnavailable(f"JetStream did not answer within {timeout_s:g} s: {exc!r}") from exc
                await asyncio.sleep(probe_timeout_s / 2)

    async def ensure_stream(self, names: Names, replicas: int, max_msg_bytes: int, create: bool = True) -> None:
        """Create (with `create`) or check the space's log stream; GridUnavailable while JetStream does not answer,
        LogMissing if it is missing and may not be created."""
        async with _answered():
            await ensure_stream(self._js, names, replicas, max_msg_bytes, create)

    async def recreate_stream(self, names: Names, replicas: int, max_msg_bytes: int, first_seq: int) -> int:
        """Recreate a missing log stream from `first_seq`, with its reset marker (returns the marker's sequence)."""
        async with _answered():
            return await recreate_stream(self._js, names, replicas, max_msg_bytes, first_seq)

    async def ensure_events_stream(self, names: Names, replicas: int) -> None:
        """Create the space's events stream if missing; GridUnavailable while JetStream does not answer."""
        async with _answered():
            await ensure_events_stream(self._js, names, replicas)

    def events(self, names: Names, member_id: str) -> EventEmitter:
        return EventEmitter(self._nc, names, member_id)

    def read_events(self, names: Names, since_s: float | None, follow: bool, idle_s: float) -> AsyncIterator[dict[str, Any]]:
        return read_events(self._js, names, since_s, follow, idle_s)

    async def log_bounds(self, names: Names) -> tuple[int, int]:
        """(first, last) stream sequence of the space's log now."""
        return await log_bounds(self._js, names)

    def read_log(self, names: Names, first_seq: int) -> AsyncIterator[tuple[int, str, bytes]]:
        """Every log message from `first_seq` on, in order, then each new one (engine.logreader)."""
        return read_log(self._js, names, first_seq)

    def changelog(self, names: Names, member_id: str, append_timeout_s: float) -> Changelog:
        return Changelog(self._nc, self._js, names, member_id, append_timeout_s)

    async def coordination(self, names: Names, replicas: int = 1, create: bool = False,
                           member_ttl_s: float = 60.0) -> Coordination:
        """The space's KV buckets (created if `create`); GridUnavailable while JetStream does not answer."""
        async with _answered():
            return await Coordination.open(self._js, names, replicas, create=create, member_ttl_s=member_ttl_s)

    # ---- closing -------------------------------------------------------------------------------------------

    async def drain(self) -> None:
        """Flush what was published, then close."""
        await self._nc.drain()

    async def close(self) -> None:
        await self._nc.close()
