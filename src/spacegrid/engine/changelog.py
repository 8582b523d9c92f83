"""The space's log in JetStream: stream set-up, ownership claims, appends fenced on them, replay and trimming."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from typing import Any, Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.errors import Error as NatsError
from nats.js.errors import BadRequestError, NotFoundError

from spacegrid import codec
from spacegrid.engine.coordination import NOT_READY
from spacegrid.engine.subjects import Names
from spacegrid.errors import (CommitUnknown, ConfigError, DecodeError, Fenced, FenceBusy, GridUnavailable, LogGap,
                              LogMissing, LogUnavailable, PoisonedLog, RequestError, SpacegridError)
from spacegrid.limits import CLAIM_BYTES_MAX, LOG_DUPLICATE_WINDOW_S, REPLAY_PENDING_BYTES_MAX, REPLAY_PENDING_MSGS_MAX

# What applying a log message raises when the message itself is bad (undecodable, wrong shape, an invariant of the
# partition's state broken by it): a replay stops there for good. LogGap is not poison (the store has the rest).
POISON = (RequestError, LogGap, ValueError, TypeError, KeyError, IndexError, AssertionError)

log = logging.getLogger("spacegrid.changelog")

WRONG_LAST_SEQUENCE = 10071
FENCE_IN_PROCESS = 10164  # a replicated stream: another message fenced on the same subject is not applied yet
FENCE_HEADER = "Nats-Expected-Last-Subject-Sequence"
FENCE_SUBJECT_HEADER = "Nats-Expected-Last-Subject-Sequence-Subject"  # the fence checks this filter instead


def stream_config(names: Names, replicas: int, max_msg_bytes: int, first_seq: int | None = None) -> api.StreamConfig:
    return api.StreamConfig(
        name=names.stream,
        subjects=[names.log_wildcard],
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        max_msg_size=max_msg_bytes,
        duplicate_window=LOG_DUPLICATE_WINDOW_S,
        allow_direct=True,
        first_seq=first_seq,
    )


def missing_log_message(names: Names) -> str:
    return (f"the space's log stream {names.stream} is missing (deleted?). The PUs refuse writes and keep serving "
            "reads; run `spacegrid repair --recreate-log` (admin) to recreate it: it waits until the store holds "
            "every acknowledged write, or says plainly what would be lost")


async def ensure_stream(js: JetStreamContext, names: Names, replicas: int, max_msg_bytes: int,
                        create: bool = True) -> None:
    """Create the space's log stream, or check the existing one covers its subjects. Without `create` (a grid
    that has a partition table, so it had a log), a missing stream raises LogMissing: a new empty log would
    restart at sequence 1, under the positions the store keeps, and hide the writes it lost."""
    try:
        info = await js.stream_info(names.stream)
    except NotFoundError:
        if not create:
            raise LogMissing(missing_log_message(names)) from None
        try:
            await js.add_stream(stream_config(names, replicas, max_msg_bytes))
        except BadRequestError as exc:
            if "already in use" not in str(exc):
                raise
        return
    assert names.log_wildcard in (info.config.subjects or []), "stream subjects changed under us"


async def recreate_stream(js: JetStreamContext, names: Names, replicas: int, max_msg_bytes: int,
                          first_seq: int) -> int:
    """Create the missing log stream starting at `first_seq` (above every position of the lost log, so positions
    only advance) and append the reset marker on the claims' filter; returns the marker's sequence. ConfigError
    if the stream exists."""
    try:
        await js.stream_info(names.stream)
    except NotFoundError:
        pass
    else:
        raise ConfigError(f"the log stream {names.stream} exists: nothing to recreate")
    await js.add_stream(stream_config(names, replicas, max_msg_bytes, first_seq=first_seq))
    ack = await js.publish(names.log_reset_subject, codec.encode({"first_seq": first_seq}), stream=names.stream)
    assert int(ack.seq) >= first_seq, "a recreated log starts at its first sequence"
    return int(ack.seq)


class Changelog:
    """One PU incarnation's view of the space's log (ADR 0009): appends to its own subject fenced on the last
    sequence of every partition's ownership claims, claims by compare-and-set, replay and following of every PU's
    writes, and trimming. Acks arrive on one subscription to our own inbox (no future per request in the client
    library, and a rejected append is an answer, never a hang)."""

    def __init__(self, nc: Client, js: JetStreamContext, names: Names, member_id: str, append_timeout_s: float) -> None:
        self.nc = nc
        self.js = js
        self.names = names
        self.subject = names.pu_log_subject(member_id)
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

    async def append(self, payload: bytes, claims_seq: int) -> int:
        """Append one message to this PU's subject if no partition was claimed after stream sequence `claims_seq`.
        Returns its sequence; raises Fenced (not applied; `last_seq` is the newest claim) or CommitUnknown."""
        return await self._publish(self.subject, payload, {FENCE_HEADER: str(claims_seq),
                                                           FENCE_SUBJECT_HEADER: self.names.claim_wildcard})

    async def claim(self, partition: int, epoch: int, member_id: str, attempts_max: int,
                    issued: Callable[[int, int], Awaitable[bool]] | None = None) -> int | None:
        """Claim the partition at `epoch` for this owner, or None when a claim at a newer epoch holds it. From the
        claim on every append of a previous owner fails its fence. Two messages: the claim (compare-and-set on the
        partition's last claim, retried while other claims land), then its confirmation (compare-and-set on the
        claim); returns the confirmation's sequence, which the new owner's replay must reach. On a replicated
        stream JetStream checks an append's fence before proposing it, against the claims applied so far: an
        append checked while the claim was in process lands after the claim, accepted, and its writes are
        acknowledged; the confirmation, proposed once the claim is applied, follows every such append.
        A newer claim is obeyed only if `issued(partition, its epoch)` says the partition table issued that epoch;
        one it never issued (written by no honest owner) is claimed over."""
        subject = self.names.claim_subject(partition)
        body = codec.encode([epoch, member_id])
        for _ in range(attempts_max):
            last_seq, last_epoch = await self._last_claim(partition)
            if last_epoch > epoch:
                if issued is None or await issued(partition, last_epoch):
                    return None
                log.error("partition %d: the claim at seq %d has epoch %d, which the partition table never issued: "
                          "claiming over it at epoch %d", partition, last_seq, last_epoch, epoch)
            try:
                claim_seq = await self._publish(subject, body, {FENCE_HEADER: str(last_seq)})
                confirmed_seq = await self._publish(subject, body, {FENCE_HEADER: str(claim_seq)})
            except (Fenced, FenceBusy):
                continue  # another claim landed since we read: read again
            assert confirmed_seq > claim_seq > last_seq, "claims only advance"
            return confirmed_seq
        raise GridUnavailable(f"partition {partition}: {attempts_max} claims in a row lost the race")

    async def _last_claim(self, partition: int) -> tuple[int, int]:
        """(sequence, epoch) of the partition's last claim; (0, 0) if it has none."""
        try:
            message = await self.js.get_last_msg(self.names.stream, self.names.claim_subject(partition))
        except NotFoundError:
            return 0, 0
        except NOT_READY as exc:
            raise GridUnavailable(f"partition {partition}'s last claim could not be read: {exc!r}") from exc
        epoch, _ = decode_claim(message.data or b"")
        return int(message.seq or 0), epoch

    async def _publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> int:
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._waiting[token] = future
        timer = loop.call_later(self.append_timeout_s, self._expire, token)
        try:
            await self.nc.publish(subject, payload, reply=f"{self._inbox}.{token}", headers=headers)
            return await future
        finally:
            timer.cancel()
            self._waiting.pop(token, None)

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

    async def stream_exists(self) -> bool | None:
        """Whether the log stream exists; None when JetStream did not answer (electing a leader, or down)."""
        try:
            await self.js.stream_info(self.names.stream)
        except NotFoundError:
            return False
        except NOT_READY:
            return None
        return True

    async def last_sequence(self, subject: str) -> int:
        """The stream sequence of the last message on a subject (wildcards allowed), 0 if there is none;
        GridUnavailable while JetStream does not answer."""
        try:
            message = await self.js.get_last_msg(self.names.stream, subject)
        except NotFoundError:
            return 0
        except NOT_READY as exc:
            raise GridUnavailable(f"the log's last message on {subject} could not be read: {exc!r}") from exc
        return int(message.seq or 0)

    async def read_message(self, seq: int) -> tuple[str, bytes, dict[str, str]]:
        """The log message at `seq`: (subject, data, headers); ConfigError if there is none (trimmed, deleted)."""
        try:
            msg = await self.js.get_msg(self.names.stream, seq)
        except NotFoundError:
            raise ConfigError(f"the log holds no message {seq} (trimmed, or already quarantined)") from None
        return str(msg.subject), bytes(msg.data or b""), dict(msg.headers or {})

    async def quarantine(self, seq: int, decision: dict[str, str]) -> int:
        """Move the log message at `seq` to the dead-letter subject, `decision` (who, when, why) in its headers,
        then delete it from the PU subjects: recoveries no longer read it. Returns the dead letter's sequence."""
        subject, data, _ = await self.read_message(seq)
        if not subject.startswith(self.names.pu_log_wildcard[:-1]):
            raise ConfigError(f"message {seq} is on {subject}, not a PU's log subject: only those can be quarantined")
        headers = {f"Spacegrid-{name.title()}": value for name, value in decision.items()}
        headers.update({"Spacegrid-Quarantined-Seq": str(seq), "Spacegrid-Quarantined-From": subject})
        ack = await self.js.publish(self.names.dead_log_subject, data, headers=headers)
        await self.js.delete_msg(self.names.stream, seq)
        return int(ack.seq)

    async def trim(self, keep_from_seq: int) -> None:
        """Delete every PU's writes before stream sequence keep_from_seq (claims stay: the fence needs them)."""
        try:
            await self.js.purge_stream(self.names.stream, seq=keep_from_seq, subject=self.names.pu_log_wildcard)
        except NatsError as exc:
            raise GridUnavailable(f"trimming the log failed: {exc}") from exc

    async def replay(self, after_seq: int, until_seq: int, apply: Callable[[int, str, Any], None],
                     size_max_bytes: int, timeout_s: float, until_subject: str | None = None) -> int:
        """Feed every PU message after after_seq up to until_seq to apply(seq, writer, message), in order (`writer`:
        the member whose subject it is on, which NATS permissions make the only one who may append there); returns
        until_seq.
        The message at until_seq is a PU message or, given, on `until_subject` (a new owner's claim): the replay
        ends when it is delivered, or a later one (it was deleted). Never on "nothing pending": the consumer may be
        placed on a replica of the stream that is behind, whose end is not the log's (a replay stopping there
        would skip acknowledged writes)."""
        if until_seq <= after_seq:
            return after_seq
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        last = after_seq
        pu_prefix = self.names.pu_log_wildcard[:-1]

        async def on_message(msg: Msg) -> None:
            nonlocal last
            seq, _ = delivery_position(msg.reply)
            if done.done() or seq <= last:
                return
            if seq <= until_seq and msg.subject.startswith(pu_prefix):
                try:
                    apply(seq, msg.subject[len(pu_prefix):], codec.decode(msg.data, size_max_bytes))
                except POISON as exc:  # the message itself is bad: no retry will get past it
                    done.set_exception(exc if isinstance(exc, LogGap) else PoisonedLog(
                        f"log message {seq} on {msg.subject} can not be applied ({type(exc).__name__}: {exc})", seq,
                        msg.subject))
                    return
                except BaseException as exc:  # surface any failure to the awaiting caller
                    done.set_exception(exc)
                    return
            last = seq
            if seq >= until_seq:
                done.set_result(None)

        subjects = [self.names.pu_log_wildcard] + ([until_subject] if until_subject is not None else [])
        sub = await self._subscribe_from(self.names.pu_log_wildcard, after_seq, on_message, subjects)
        try:
            await asyncio.wait_for(done, timeout_s)
        except asyncio.TimeoutError:
            raise GridUnavailable(f"replay of the log did not reach seq {until_seq} in {timeout_s}s "
                                  f"(at {last})") from None
        finally:
            await sub.unsubscribe()
        assert last >= until_seq, "a replay reports only a position it reached"
        return until_seq

    async def follow(self, after_seq: int, apply: Callable[[int, str, Any, int], None], size_max_bytes: int,
                     on_broken: Callable[[], None], subjects: list[str] | None = None) -> Any:
        """Feed every PU message after after_seq (of the PU subjects in `subjects` only, if given), then every new
        one as it is appended, to apply(seq, subject, message, pending) where pending counts the messages the
        server still has to deliver; returns the subscription (unsubscribe to stop). A message that fails to
        decode or apply stops the feed (logged) and calls on_broken()."""
        state = {"last": after_seq, "broken": False}

        async def on_message(msg: Msg) -> None:
            seq, pending = delivery_position(msg.reply)
            if state["broken"] or seq <= state["last"]:
                return
            try:
                apply(seq, msg.subject, codec.decode(msg.data, size_max_bytes), pending)
            except Exception:
                state["broken"] = True
                log.exception("following the log stopped at seq %d", seq)
                on_broken()
                return
            state["last"] = seq

        return await self._subscribe_from(self.names.pu_log_wildcard, after_seq, on_message, subjects)

    async def watch_claims(self, apply: Callable[[int, int, int, str], None]) -> Any:
        """Feed every partition's claims, then each new one, to apply(seq, partition, epoch, member); returns the
        subscription. A claim that does not decode is skipped (logged): it fences like any other. A recreated log's
        reset marker comes as a claim of partition -1."""
        prefix = len(self.names.claim_wildcard) - 1

        async def on_message(msg: Msg) -> None:
            seq, _ = delivery_position(msg.reply)
            if msg.subject == self.names.log_reset_subject:
                apply(seq, -1, 0, "")  # a recreated log's first message: fences like a claim of no partition
                return
            try:
                epoch, member = decode_claim(msg.data)
                partition = int(msg.subject[prefix:])
            except (SpacegridError, ValueError):
                log.error("claim at seq %d on %s does not decode; ignored", seq, msg.subject)
                epoch, member, partition = 0, "", -1
            apply(seq, partition, epoch, member)

        return await self._subscribe_from(self.names.claim_wildcard, 0, on_message)

    async def _subscribe_from(self, subject: str, after_seq: int, on_message: Callable[[Msg], Any],
                              filter_subjects: list[str] | None = None) -> Any:
        """An ordered push consumer on the subject (filter), or on `filter_subjects`, starting after after_seq."""
        return await self.js.subscribe(
            subject,
            stream=self.names.stream,
            cb=on_message,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            config=api.ConsumerConfig(opt_start_seq=after_seq + 1, filter_subjects=filter_subjects or None),
            pending_msgs_limit=REPLAY_PENDING_MSGS_MAX,
            pending_bytes_limit=REPLAY_PENDING_BYTES_MAX,
        )


def decode_claim(data: bytes) -> tuple[int, str]:
    """(epoch, member) of a claim message; DecodeError if it is not one."""
    claim = codec.decode(data, CLAIM_BYTES_MAX)
    if not (isinstance(claim, list) and len(claim) == 2 and isinstance(claim[0], int) and isinstance(claim[1], str)):
        raise DecodeError(f"not a claim: {claim!r:.80}")
    return claim[0], claim[1]


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
        return LogUnavailable(f"JetStream did not take the append (status {status or 'empty reply'}); nothing was "
                              "applied")
    try:
        reply = json.loads(msg.data)
    except ValueError:
        return CommitUnknown(f"unparseable append acknowledgement {msg.data[:80]!r}")
    error = reply.get("error")
    if error is None:
        return int(reply["seq"])
    if error.get("err_code") == WRONG_LAST_SEQUENCE:
        description = str(error.get("description", ""))
        found = description.rpartition(":")[2].strip()
        return Fenced(f"append rejected by the fence: {description}", int(found) if found.isdigit() else 0)
    if error.get("err_code") == FENCE_IN_PROCESS:
        return FenceBusy("append refused while another one on the same fence is in process; nothing was applied")
    return CommitUnknown(f"append rejected: {error.get('description')} (err_code {error.get('err_code')})")
