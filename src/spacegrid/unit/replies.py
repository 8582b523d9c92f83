"""Replies of one PU: batched per reply subject per event-loop tick, chunked by size, counted against a bound."""

from __future__ import annotations

import asyncio
import logging
import time

from spacegrid import protocol
from spacegrid.core.partition import Outcome
from spacegrid.engine.transport import Transport
from spacegrid.errors import SpacegridError
from spacegrid.limits import Limits
from spacegrid.unit.latency import Latencies
from spacegrid.values import Values

log = logging.getLogger("spacegrid.replies")


class Replies:
    """`send(reply_to, encoded)` queues a reply; one task per tick publishes what queued. `pending` is what is
    queued and not yet handed to the connection: past `limits.replies_pending_max` the PU refuses new requests
    (Overloaded) until it drains."""

    def __init__(self, transport: Transport, limits: Limits, values: Values = protocol.PLAIN) -> None:
        self.transport = transport
        self.limits = limits
        self.values = values  # the space's codec, for results
        self.pending = 0
        self.latencies = Latencies()  # of the replies to served operations, by kind
        self.errors: dict[str, int] = {}  # error replies by the error's class (its wire code)
        self._out: dict[str, list[bytes]] = {}
        self._flush_scheduled = False

    def send(self, reply_to: str, item: bytes) -> None:
        if not reply_to:
            return
        self._out.setdefault(reply_to, []).append(item)
        self.pending += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().create_task(self.flush())

    def error(self, reply_to: str, req_id: int, error: SpacegridError) -> None:
        self.errors[error.code] = self.errors.get(error.code, 0) + 1
        self.send(reply_to, protocol.error_reply(req_id, error))

    def outcome(self, reply_to: str, req_id: int, outcome: Outcome) -> None:
        if outcome.received_s:
            self.latencies.observe(outcome.kind, time.monotonic() - outcome.received_s)
        if outcome.error is not None:
            self.error(reply_to, req_id, outcome.error)
            return
        try:
            item = protocol.ok_reply(req_id, outcome.value, self.values)
        except SpacegridError as exc:  # a read-only handler's result of a type the space did not register
            self.error(reply_to, req_id, exc)
            return
        self.send(reply_to, item)

    async def flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, {}
        for reply_to, items in out.items():
            self.pending -= len(items)
            assert self.pending >= 0, "replies are counted once each"
            for message in protocol.chunks(items, self.limits.request_payload_bytes_max,
                                          self.limits.requests_per_message_max):
                try:
                    await self.transport.publish(reply_to, message)
                except Exception as exc:  # closed or reconnecting: the client's attempt timer retries
                    log.debug("reply to %s not sent: %s", reply_to, exc)
