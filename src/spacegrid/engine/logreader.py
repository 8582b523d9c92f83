"""Reading the space's log as a change feed does: every message in stream order from a sequence, through an ordered
consumer (it reads again from the last one delivered after a reconnect or a lost delivery), with backpressure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from spacegrid.engine.changelog import delivery_position, missing_log_message
from spacegrid.engine.coordination import NOT_READY
from spacegrid.engine.subjects import Names
from spacegrid.errors import GridUnavailable, LogMissing
from spacegrid.limits import FEED_QUEUE_MSGS_MAX, REPLAY_PENDING_BYTES_MAX, REPLAY_PENDING_MSGS_MAX


async def log_bounds(js: JetStreamContext, names: Names) -> tuple[int, int]:
    """(first, last) stream sequence of the log now; LogMissing if there is no log, GridUnavailable while
    JetStream does not answer."""
    try:
        info = await js.stream_info(names.stream)
    except NotFoundError:
        raise LogMissing(missing_log_message(names)) from None
    except NOT_READY as exc:
        raise GridUnavailable(f"JetStream did not answer for the log's bounds: {exc!r}") from exc
    return int(info.state.first_seq), int(info.state.last_seq)


async def read_log(js: JetStreamContext, names: Names, first_seq: int) -> AsyncIterator[tuple[int, str, bytes]]:
    """(stream sequence, subject, data) of every log message from `first_seq` on, in order, then each new one as
    it is appended, until the caller stops iterating. At most FEED_QUEUE_MSGS_MAX wait here unread: past it the
    consumer's callback waits too, so a slow reader slows its delivery instead of growing a queue."""
    assert first_seq >= 1, "stream sequences start at 1"
    queue: asyncio.Queue[Any] = asyncio.Queue(FEED_QUEUE_MSGS_MAX)

    async def on_message(msg: Any) -> None:
        await queue.put(msg)

    try:
        sub = await js.subscribe(names.log_wildcard, stream=names.stream, cb=on_message, ordered_consumer=True,
                                 deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                                 config=api.ConsumerConfig(opt_start_seq=first_seq),
                                 pending_msgs_limit=REPLAY_PENDING_MSGS_MAX,
                                 pending_bytes_limit=REPLAY_PENDING_BYTES_MAX)
    except NotFoundError:
        raise LogMissing(missing_log_message(names)) from None
    except NOT_READY as exc:
        raise GridUnavailable(f"JetStream did not answer for a consumer of the log: {exc!r}") from exc
    try:
        while True:
            msg = await queue.get()
            seq, _ = delivery_position(msg.reply)
            yield seq, msg.subject, msg.data
    finally:
        await sub.unsubscribe()
