"""The change feed over server-sent events: GET /maps/{map}/changes[?key=K&from=P] streams Client.listen's committed
changes, one `change` event each, its SSE id the change's position: a reconnecting EventSource sends it back as
Last-Event-ID and resumes right after it (at-least-once across reconnects, never a change skipped)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from spacegrid.core.feed import Change, Position
from spacegrid.errors import Overloaded, SpacegridError
from spacegrid.gateway.auth import Caller
from spacegrid.gateway.statuses import error_body
from spacegrid.gateway.values import dumps, to_json
from spacegrid.limits import GATEWAY_CHANGE_STREAMS_MAX
from spacegrid.space import check_key

if TYPE_CHECKING:
    from spacegrid.client.client import Client

EARLIEST: Final = "earliest"
KEEPALIVE: Final = b": keep-alive\n\n"  # an SSE comment: EventSource ignores it
POSITION_PATTERN: Final = r"^(earliest|[0-9]{1,19}(\.[0-9]{1,19}\.[0-9]{1,19})?)$"


def change_event(change: Change) -> bytes:
    """One SSE event of a change."""
    document = {"kind": change.kind, "map": change.map, "key": change.key, "value": to_json(change.value),
                "version": change.version, "partition": change.partition, "position": str(change.position)}
    return b"id: %s\nevent: change\ndata: %s\n\n" % (str(change.position).encode("ascii"), dumps(document))


class ChangeStreams:
    """The open change feeds of a gateway, at most GATEWAY_CHANGE_STREAMS_MAX; an idle one sends a comment every
    `keepalive_s` (proxies close connections that stay silent)."""

    def __init__(self, client: Client, keepalive_s: float) -> None:
        assert keepalive_s > 0
        self.client = client
        self.keepalive_s = keepalive_s
        self.open = 0

    async def changes(self, request: Request, caller: Caller) -> Response:
        map_name = request.path_params["map"]
        self.client.space.map_def(map_name)  # 404 before the stream starts
        key = request.query_params.get("key")
        if key is not None:
            check_key(key)
        start = request.headers.get("last-event-id") or request.query_params.get("from")
        after: str | Position | None = None
        if start is not None:
            after = EARLIEST if start == EARLIEST else Position.parse(start)  # RequestError: a 400
        if self.open >= GATEWAY_CHANGE_STREAMS_MAX:
            raise Overloaded(f"{self.open} change feeds are open (limits.GATEWAY_CHANGE_STREAMS_MAX): try later")
        feed = self.client.listen(map_name, key, from_=after)  # runs once the stream is read
        return StreamingResponse(self._stream(feed, map_name), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def _stream(self, feed: AsyncIterator[Change], map_name: str) -> AsyncIterator[bytes]:
        """The events; a failure of the feed (ChangesLost: the log no longer holds them) ends the stream with an
        `error` event carrying the one error body. Closed when the caller goes."""
        self.open += 1  # counted from its first read: a stream never read is never counted
        upcoming: asyncio.Future[Change | None] | None = None  # the next change: kept across keep-alives
        try:
            yield f": spacegrid changes of {map_name}\n\n".encode()
            async with contextlib.aclosing(feed):  # type: ignore[type-var]  # listen's async generator
                while True:
                    if upcoming is None:
                        upcoming = asyncio.ensure_future(_next(feed))
                    done, _ = await asyncio.wait((upcoming,), timeout=self.keepalive_s)
                    if not done:
                        yield KEEPALIVE
                        continue
                    change, upcoming = upcoming.result(), None
                    if change is None:
                        return
                    yield change_event(change)
        except SpacegridError as exc:
            _, body, _ = error_body(exc, write=False)
            yield b"event: error\ndata: %s\n\n" % dumps(body)
        finally:
            self.open -= 1
            if upcoming is not None:  # the caller went while the feed waited
                upcoming.cancel()
                await asyncio.gather(upcoming, return_exceptions=True)


async def _next(feed: AsyncIterator[Change]) -> Change | None:
    """The feed's next change; None at its end."""
    try:
        return await anext(feed)
    except StopAsyncIteration:
        return None

