"""Talking to PUs with raw NATS messages, as a thin client in another language would."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import nats

from spacegrid import codec
from spacegrid.engine.connection import nats_options
from spacegrid.security.access import Access


async def collect_replies(url: str, subject: str, data: bytes, replies_expected: int, timeout_s: float = 5.0,
                          before_wait: Callable[[], Awaitable[None]] | None = None,
                          access: Access | None = None) -> list[Any]:
    """Send one message and gather reply items (they may come in several messages) until there are enough.
    `before_wait` runs once the server holds the message (a flush returns only after the server processed what was
    sent before it, so the message is queued for its subscriber, even a stopped one)."""
    nc = await nats.connect(url, **nats_options(access or Access()))
    replies: list[Any] = []
    got_all = asyncio.Event()

    async def on_reply(msg: Any) -> None:
        replies.extend(codec.decode(msg.data, 1 << 24))
        if len(replies) >= replies_expected:
            got_all.set()

    try:
        inbox = nc.new_inbox()
        await nc.subscribe(inbox, cb=on_reply)
        await nc.publish(subject, data, reply=inbox)
        await nc.flush()
        if before_wait is not None:
            await before_wait()
        await asyncio.wait_for(got_all.wait(), timeout_s)
        return replies
    finally:
        await nc.close()
