"""The partition changelog in JetStream: stream set-up, fenced appends acknowledged to our own inbox, and replay."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from typing import Any, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.errors import Error as NatsError
from nats.js.errors import BadRequestError, NotFoundError

from spacegrid import codec
from spacegrid.engine.subjects import Names
from spacegrid.errors import CommitUnknown, Fenced, GridUnavailable, SpacegridError
from spacegrid.limits import LOG_DUPLICATE_WINDOW_S, REPLAY_PENDING_BYTES_MAX, REPLAY_PENDING_MSGS_MAX

log = logging.getLogger("spacegrid.changelog")

WRONG_LAST_SEQUENCE = 10071
FENCE_HEADER = "Nats-Expected-Last-Subject-Sequence"


async def ensure_stream(js: JetStreamContext, names: Names, replicas: int, max_msg_bytes: int) -> None:
    """Create the space's log stream, or check the existing one covers its subjects."""
    config = api.StreamConfig(
        name=names.stream,
        subjects=[names.log_wildcard],
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        max_msg_size=max_msg_bytes,
        duplicate_window=LOG_DUPLICATE_WINDOW_S,
        allow_direct=True,
    )
    try:
        info = await js.stream_info(names.stream)
    except NotFoundError:
        try:
            await js.add_stream(config)
        except BadRequestError as exc:
            if "already in use" not in str(exc):
                raise
        return
    assert names.log_wildcard in (info.config.subjects or []), "stream subjects changed under us"


class Changelog:
    """Appends fenced log messages; acks arrive on one subscription to our own inbox (no future per request
    in the client library, and a rejected append is an answer, never a hang)."""

    def __init__(self, nc: Client, js: JetStreamContext, names: Names, append_timeout_s: float) -> None:
        self.nc = nc
        self.js = js
        self.names = names
        self.append_timeout_s = append_timeout_s
        self._inbox = nc.new_inbox()
        self._tokens = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[int]] = {}
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_ack)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(CommitUnknown("changelog closed with the append in flight"))
        self._waiting.clear()

    async def append(self, partition: int, payload: bytes, expected_last_seq: int) -> int:
        """Append one message to the partition's subject if its last sequence is `expected_last_seq`.
        Returns the new sequence; raises Fenced (not applied) or CommitUnknown (maybe applied)."""
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._waiting[token] = future
        timer = loop.call_later(self.append_timeout_s, self._expire, token)
        try:
            await self.nc.publish(
                self.names.log_subject(partition),
                payload,
                reply=f"{self._inbox}.{token}",
                headers={FENCE_HEADER: str(expected_last_seq)},
            )
            seq = await future
        finally:
            timer.cancel()
            self._waiting.pop(token, None)
        assert seq > expected_last_seq, "stream sequences only advance"
        return seq

    def _expire(self, token: str) -> None:
        future = self._waiting.pop(token, None)
        if future is not None and not future.done():
            future.set_exception(CommitUnknown(f"no append acknowledgement within {self.append_timeout_s}s"))

    async def _on_ack(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject.rpartition(".")[2], None)
        if future is None or future.done():
            return
        future_result = _parse_ack(msg)
        if isinstance(future_result, SpacegridError):
            future.set_exception(future_result)
        else:
            future.set_result(future_result)

    async def last_sequence(self, partition: int) -> int:
        """The stream sequence of the partition subject's last message, 0 if it has none."""
        try:
            message = await self.js.get_last_msg(self.names.stream, self.names.log_subject(partition))
        except NotFoundError:
            return 0
        return int(message.seq or 0)

    async def trim(self, partition: int, keep_from_seq: int) -> None:
        """Delete the partition's messages before stream sequence keep_from_seq; that one and later ones stay."""
        try:
            await self.js.purge_stream(self.names.stream, seq=keep_from_seq, subject=self.names.log_subject(partition))
        except NatsError as exc:
            raise GridUnavailable(f"trimming partition {partition}'s log failed: {exc}") from exc

    async def replay(
        self,
        partition: int,
        after_seq: int,
        until_seq: int,
        apply: Callable[[int, Any], None],
        size_max_bytes: int,
        timeout_s: float,
    ) -> int:
        """Feed every message of the partition with after_seq < seq <= until_seq to apply(seq, message)."""
        if until_seq <= after_seq:
            return after_seq
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        last = after_seq

        async def on_message(msg: Msg) -> None:
            nonlocal last
            seq, _ = delivery_position(msg.reply)
            if done.done() or seq <= last:
                return
            try:
                apply(seq, codec.decode(msg.data, size_max_bytes))
            except BaseException as exc:  # surface any failure to the awaiting caller
                done.set_exception(exc)
                return
            last = seq
            if seq >= until_seq:
                done.set_result(None)

        sub = await self._subscribe_from(partition, after_seq, on_message)
        try:
            await asyncio.wait_for(done, timeout_s)
        except asyncio.TimeoutError:
            raise GridUnavailable(f"replay of partition {partition} did not reach seq {until_seq} in {timeout_s}s") from None
        finally:
            await sub.unsubscribe()
        return last


    async def follow(self, partition: int, after_seq: int, apply: Callable[[int, Any, int], None],
                     size_max_bytes: int, on_broken: Callable[[], None]) -> Any:
        """Feed every message after after_seq, then every new one as it is appended, to apply(seq, message,
        pending) where pending counts the messages the server still has to deliver; returns the subscription
        (unsubscribe to stop). A message that fails to decode or apply stops the feed (logged) and calls
        on_broken()."""
        state = {"last": after_seq, "broken": False}

        async def on_message(msg: Msg) -> None:
            seq, pending = delivery_position(msg.reply)
            if state["broken"] or seq <= state["last"]:
                return
            try:
                apply(seq, codec.decode(msg.data, size_max_bytes), pending)
            except Exception:
                state["broken"] = True
                log.exception("following partition %d stopped at seq %d", partition, seq)
                on_broken()
                return
            state["last"] = seq

        return await self._subscribe_from(partition, after_seq, on_message)

    async def _subscribe_from(self, partition: int, after_seq: int, on_message: Callable[[Msg], Any]) -> Any:
        """An ordered push consumer on the partition's subject, starting after after_seq."""
        return await self.js.subscribe(
            self.names.log_subject(partition),
            stream=self.names.stream,
            cb=on_message,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            config=api.ConsumerConfig(opt_start_seq=after_seq + 1),
            pending_msgs_limit=REPLAY_PENDING_MSGS_MAX,
            pending_bytes_limit=REPLAY_PENDING_BYTES_MAX,
        )

def delivery_position(reply: str) -> tuple[int, int]:
    """(stream sequence, messages still pending) of a message a JetStream consumer delivered, read off its ack
    subject without building nats-py's Metadata (dates, dataclasses: a noticeable share of a backup's CPU).
    `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>` (9 tokens) or the 12-token form with a
    domain and an account hash after ACK."""
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[8])
    if len(tokens) >= 11 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[7]), int(tokens[10])
    raise ValueError(f"not a JetStream delivery: {reply!r}")


def _parse_ack(msg: Msg) -> int | SpacegridError:
    if not msg.data:
        status = (msg.headers or {}).get("Status", "")
        return GridUnavailable(f"JetStream did not take the append (status {status or 'empty reply'}); is JetStream up?")
    try:
        reply = json.loads(msg.data)
    except ValueError:
        return CommitUnknown(f"unparseable append acknowledgement {msg.data[:80]!r}")
    error = reply.get("error")
    if error is None:
        return int(reply["seq"])
    if error.get("err_code") == WRONG_LAST_SEQUENCE:
        return Fenced(f"append rejected by the fence: {error.get('description')}")
    return CommitUnknown(f"append rejected: {error.get('description')} (err_code {error.get('err_code')})")
