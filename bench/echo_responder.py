"""A NATS echo responder for bench/tickets.py: the transport ceiling of spacegrid's client path.

It subscribes to one subject, decodes each message as a batch of spacegrid requests (protocol.request) and answers
every request at once with a small constant payload (the size of an `availability` result), batching replies per
reply subject per event-loop tick exactly as a PU does. No state, no handler, no JetStream append.

Usage: python bench/echo_responder.py NATS_URL SUBJECT   (prints "ready" once subscribed; stops on SIGTERM)
"""

from __future__ import annotations

import asyncio
import signal
import sys

from nats.aio.msg import Msg

from spacegrid import codec, protocol
from spacegrid.engine.connection import connect, install_uvloop
from spacegrid.limits import DEFAULT_LIMITS

REPLY_PAYLOAD = {"exists": True, "free": 90, "sold": 10, "seats": 100}


async def serve(url: str, subject: str) -> None:
    nc = await connect(url, "bench-echo")
    out: dict[str, list[bytes]] = {}
    flush_scheduled = False
    limits = DEFAULT_LIMITS

    async def flush() -> None:
        nonlocal out, flush_scheduled
        flush_scheduled = False
        batches, out = out, {}
        for reply_to, items in batches.items():
            for message in protocol.chunks(items, limits.request_payload_bytes_max, limits.requests_per_message_max):
                await nc.publish(reply_to, message)

    async def on_message(msg: Msg) -> None:
        nonlocal flush_scheduled
        reply_to = msg.reply
        if not reply_to:
            return
        requests = codec.decode(msg.data, limits.request_payload_bytes_max)
        items = out.setdefault(reply_to, [])
        for request in requests:
            items.append(protocol.ok_reply(request[0], REPLY_PAYLOAD))
        if not flush_scheduled:
            flush_scheduled = True
            asyncio.get_running_loop().create_task(flush())

    await nc.subscribe(subject, cb=on_message)
    await nc.flush()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await nc.drain()


def main() -> None:
    url, subject = sys.argv[1], sys.argv[2]
    install_uvloop()
    asyncio.run(serve(url, subject))


if __name__ == "__main__":
    main()
