"""The space's log (engine/changelog.py, ADR 0009) against a real nats-server: appends to a PU's own subject fenced
on the last ownership claim of any partition, claims by compare-and-set, the last sequence, replay of every PU's
messages up to a bound, following, watching the claims, trimming, and appends that get no acknowledgement."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from nats.js.errors import NotFoundError

from spacegrid import codec
from spacegrid.core.logformat import encode_pu_message, parts_of
from spacegrid.engine.changelog import Changelog, decode_claim, ensure_stream
from spacegrid.engine.connection import connect
from spacegrid.engine.subjects import Names
from spacegrid.errors import CommitUnknown, Fenced, GridUnavailable
from spacegrid.testing.eventually import eventually

NAMES = Names("cl")
SIZE_MAX_BYTES = 1 << 20
APPEND_TIMEOUT_S = 5.0
CLAIM_ATTEMPTS_MAX = 20


@asynccontextmanager
async def opened(url: str, member_id: str = "pu-a", names: Names = NAMES, with_stream: bool = True,
                 append_timeout_s: float = APPEND_TIMEOUT_S) -> AsyncIterator[Changelog]:
    """A started Changelog of PU `member_id` on a raw connection of its own (and the space's stream, unless
    with_stream is False)."""
    nc = await connect(url, f"test-changelog-{member_id}")
    try:
        js = nc.jetstream()
        if with_stream:
            await ensure_stream(js, names, replicas=1, max_msg_bytes=SIZE_MAX_BYTES)
        changelog = Changelog(nc, js, names, member_id, append_timeout_s)
        await changelog.start()
        try:
            yield changelog
        finally:
            await changelog.stop()
    finally:
        await nc.close()


def run(main: Callable[[], Awaitable[None]], timeout_s: float = 30.0) -> None:
    asyncio.run(asyncio.wait_for(main(), timeout_s))


def message(partition: int, value: Any) -> bytes:
    """A PU message with one part: the partition's value."""
    return encode_pu_message([(partition, codec.encode(value))])


def decoded(pu_message: Any) -> list[tuple[int, Any]]:
    """[(partition, value)] of a decoded PU message."""
    return [(partition, codec.decode(part, SIZE_MAX_BYTES)) for partition, part in parts_of(pu_message)]


async def claims_seq(changelog: Changelog) -> int:
    """What an append is fenced on: the last claim of any partition (0: none)."""
    return await changelog.last_sequence(changelog.names.claim_wildcard)


async def append_values(changelog: Changelog, partition: int, values: list[Any]) -> list[int]:
    """Append one message per value (one part, for `partition`), fenced on the current claims; their sequences."""
    fence = await claims_seq(changelog)
    return [await changelog.append(message(partition, value), fence) for value in values]


async def replayed(changelog: Changelog, after_seq: int, until_seq: int, timeout_s: float = 5.0,
                   until_subject: str | None = None) -> tuple[list[tuple[int, list[tuple[int, Any]]]], int]:
    """What replay feeds for after_seq and until_seq, [(seq, [(partition, value)])], and what it returns."""
    fed: list[tuple[int, list[tuple[int, Any]]]] = []
    last = await changelog.replay(after_seq, until_seq, lambda seq, _, msg: fed.append((seq, decoded(msg))),
                                  SIZE_MAX_BYTES, timeout_s, until_subject)
    return fed, last


async def subject_of(changelog: Changelog, seq: int) -> str:
    return (await changelog.js.get_msg(changelog.names.stream, seq)).subject


def test_an_append_fenced_on_the_current_claims_sequence_is_accepted(nats_url: str) -> None:
    """An append fenced on the last claim of any partition (0 while there is none) is accepted, lands on the PU's
    own subject and returns its stream sequence; PU messages (its own or another PU's) do not move the fence, and
    last_sequence reports a subject's or a filter's last message, 0 when there is none."""

    async def main() -> None:
        async with opened(nats_url, "pu-a") as a, opened(nats_url, "pu-b") as b:
            assert await claims_seq(a) == 0
            assert await a.last_sequence(NAMES.pu_log_wildcard) == 0
            first = await a.append(message(0, "a"), 0)
            other = await b.append(message(1, "x"), 0)  # PU messages are no claims: the fence is still at 0
            second = await a.append(message(0, "b"), 0)
            assert 0 < first < other < second
            assert await subject_of(a, first) == NAMES.pu_log_subject("pu-a")
            assert await subject_of(a, other) == NAMES.pu_log_subject("pu-b")
            claim = await a.claim(0, 1, "pu-a", CLAIM_ATTEMPTS_MAX)
            assert claim is not None and claim > second
            third = await a.append(message(0, "c"), claim)
            assert third > claim
            assert await a.last_sequence(NAMES.pu_log_subject("pu-a")) == third
            assert await a.last_sequence(NAMES.pu_log_subject("pu-b")) == other
            assert await a.last_sequence(NAMES.pu_log_wildcard) == third
            assert await a.last_sequence(NAMES.claim_subject(0)) == claim
            assert await a.last_sequence(NAMES.claim_subject(1)) == 0
            assert await claims_seq(b) == claim

    run(main)


def test_an_append_fenced_on_an_older_claim_is_refused_after_another_members_claim(nats_url: str) -> None:
    """Once another member claimed a partition (any partition: the fence covers every claim), an append fenced on
    the older claims sequence raises Fenced whose last_seq is the new claim's sequence, and nothing is appended;
    the same append fenced on that sequence is accepted. An append fenced on 0 is refused once any claim exists."""

    async def main() -> None:
        async with opened(nats_url, "pu-a") as a, opened(nats_url, "pu-b") as b:
            own = await a.claim(0, 1, "pu-a", CLAIM_ATTEMPTS_MAX)
            assert own is not None
            mine = await a.append(message(0, "mine"), own)
            theirs = await b.claim(1, 1, "pu-b", CLAIM_ATTEMPTS_MAX)  # another partition's claim
            assert theirs is not None and theirs > mine
            with pytest.raises(Fenced) as refused:
                await a.append(message(0, "stale"), own)
            assert refused.value.last_seq == theirs
            assert await a.last_sequence(NAMES.pu_log_wildcard) == mine, "the refused append was not applied"
            accepted = await a.append(message(0, "after"), theirs)
            assert accepted > theirs

            taken = await b.claim(0, 2, "pu-b", CLAIM_ATTEMPTS_MAX)  # the deposing claim of a's own partition
            assert taken is not None and taken > accepted
            with pytest.raises(Fenced) as deposed:
                await a.append(message(0, "deposed"), theirs)
            assert deposed.value.last_seq == taken
            with pytest.raises(Fenced) as unclaimed:
                await a.append(message(0, "no claim seen"), 0)
            assert unclaimed.value.last_seq == taken
            assert await a.last_sequence(NAMES.pu_log_wildcard) == accepted
            fed, _ = await replayed(a, 0, taken, until_subject=NAMES.claim_subject(0))
            assert fed == [(mine, [(0, "mine")]), (accepted, [(0, "after")])]

    run(main)


def test_a_claim_is_a_compare_and_set_on_the_partitions_last_claim(nats_url: str) -> None:
    """claim() appends [epoch, member] to the partition's claim subject unless its last claim is at a greater
    epoch (then it returns None and appends nothing); claims in a row, at equal or greater epochs and by either
    member, each succeed with increasing sequences, PU messages between them do not disturb them, other
    partitions' claims are independent, and concurrent claims both land (the loser of the race reads again)."""

    async def main() -> None:
        async with opened(nats_url, "pu-a") as a, opened(nats_url, "pu-b") as b:
            first = await a.claim(0, 2, "pu-a", CLAIM_ATTEMPTS_MAX)
            assert first is not None
            assert await b.claim(0, 1, "pu-b", CLAIM_ATTEMPTS_MAX) is None
            last = await a.js.get_last_msg(NAMES.stream, NAMES.claim_subject(0))
            assert (int(last.seq), decode_claim(last.data)) == (first, (2, "pu-a")), "the lower epoch appended nothing"
            await append_values(a, 0, ["between"])
            second = await b.claim(0, 2, "pu-b", CLAIM_ATTEMPTS_MAX)
            assert second is not None and second > first
            third = await a.claim(0, 3, "pu-a", CLAIM_ATTEMPTS_MAX)
            assert third is not None and third > second
            last = await a.js.get_last_msg(NAMES.stream, NAMES.claim_subject(0))
            assert (int(last.seq), decode_claim(last.data)) == (third, (3, "pu-a"))
            other = await b.claim(1, 1, "pu-b", CLAIM_ATTEMPTS_MAX)  # partition 0's epoch 3 does not matter here
            assert other is not None and other > third
            raced = await asyncio.gather(a.claim(2, 5, "pu-a", CLAIM_ATTEMPTS_MAX),
                                         b.claim(2, 5, "pu-b", CLAIM_ATTEMPTS_MAX))
            assert None not in raced and len(set(raced)) == 2 and min(raced) > other  # type: ignore[type-var]
            assert await a.last_sequence(NAMES.claim_subject(2)) == max(raced)  # type: ignore[type-var]

    run(main)


def test_replay_feeds_every_pus_messages_in_stream_order_up_to_until_seq(nats_url: str) -> None:
    """replay(after_seq, until_seq) feeds the messages of every PU subject with after_seq < seq <= until_seq, in
    stream order, and no claim; it returns until_seq, at once when until_seq is not past after_seq."""

    async def main() -> None:
        async with opened(nats_url, "pu-a") as a, opened(nats_url, "pu-b") as b:
            seqs: list[int] = []
            expected: list[tuple[int, list[tuple[int, Any]]]] = []
            for i in range(3):  # the two PUs' messages interleaved
                (seq,) = await append_values(a, 0, [f"a{i}"])
                expected.append((seq, [(0, f"a{i}")]))
                (seq,) = await append_values(b, 1, [f"b{i}"])
                expected.append((seq, [(1, f"b{i}")]))
            seqs = [seq for seq, _ in expected]
            assert await replayed(a, seqs[1], seqs[4]) == (expected[2:5], seqs[4])
            assert await replayed(b, 0, seqs[-1]) == (expected, seqs[-1])

            assert await b.claim(1, 1, "pu-b", CLAIM_ATTEMPTS_MAX) is not None  # not fed: claims are no PU messages
            (later,) = await append_values(a, 0, ["after the claim"])
            fed, last = await replayed(b, seqs[3], later)
            assert (fed, last) == (expected[4:] + [(later, [(0, "after the claim")])], later)
            assert await replayed(b, later, later) == ([], later)

    run(main)


def test_replay_stops_at_an_until_seq_that_is_no_pu_message(nats_url: str) -> None:
    """replay(after_seq, until_seq) where until_seq is a claim (as a new owner's replay up to its own claim is) and
    PU messages follow it feeds nothing after until_seq and returns until_seq; likewise when no PU message at all
    lies in the range."""

    async def main() -> None:
        async with opened(nats_url, "pu-a") as a, opened(nats_url, "pu-b") as b:
            seqs = await append_values(a, 0, ["a0", "a1"])
            claim = await b.claim(0, 1, "pu-b", CLAIM_ATTEMPTS_MAX)
            assert claim is not None
            await append_values(a, 1, ["after the claim"])
            until_subject = b.names.claim_subject(0)
            assert await replayed(b, 0, claim, until_subject=until_subject) == (
                [(seqs[0], [(0, "a0")]), (seqs[1], [(0, "a1")])], claim)
            assert await replayed(b, seqs[1], claim, until_subject=until_subject) == ([], claim)

    run(main)


def test_replay_of_an_empty_log_returns_at_once(nats_url: str) -> None:
    """On a log with no PU message (claims only, or nothing at all), replay feeds nothing and returns until_seq
    without waiting for its timeout."""

    async def main() -> None:
        async with opened(nats_url) as changelog:
            loop = asyncio.get_running_loop()
            started_s = loop.time()
            assert await replayed(changelog, 0, 0, timeout_s=30) == ([], 0)
            claim = await changelog.claim(0, 1, "pu-a", CLAIM_ATTEMPTS_MAX)
            assert claim is not None
            assert await replayed(changelog, 0, claim, timeout_s=30,
                                  until_subject=changelog.names.claim_subject(0)) == ([], claim)
            assert loop.time() - started_s < 5, "replay waited for its timeout"

    run(main)


def test_follow_feeds_the_existing_messages_then_each_new_one(nats_url: str) -> None:
    """follow(after_seq) feeds every PU's messages after after_seq, with their subject and the count the server
    still has to deliver (0 once caught up), then each message appended later, never a claim, until unsubscribed."""

    async def main() -> None:
        async with opened(nats_url, "pu-a") as a, opened(nats_url, "pu-b") as b:
            seqs = await append_values(a, 0, ["a", "b"])
            assert await b.claim(1, 1, "pu-b", CLAIM_ATTEMPTS_MAX) is not None
            seqs += await append_values(b, 1, ["c"])
            fed: list[tuple[int, str, list[tuple[int, Any]], int]] = []
            sub = await a.follow(seqs[0], lambda seq, subject, msg, pending: fed.append((seq, subject, decoded(msg),
                                                                                           pending)),
                                 SIZE_MAX_BYTES, on_broken=lambda: pytest.fail("broken"))

            async def caught_up(count: int) -> None:
                assert len(fed) == count, fed

            await eventually(lambda: caught_up(2), timeout_s=5)
            assert [entry[:3] for entry in fed] == [(seqs[1], NAMES.pu_log_subject("pu-a"), [(0, "b")]),
                                                    (seqs[2], NAMES.pu_log_subject("pu-b"), [(1, "c")])]
            assert fed[-1][3] == 0
            (fourth,) = await append_values(b, 1, ["d"])
            await eventually(lambda: caught_up(3), timeout_s=5)
            assert fed[-1] == (fourth, NAMES.pu_log_subject("pu-b"), [(1, "d")], 0)
            await sub.unsubscribe()

    run(main)


def test_follow_stops_at_a_message_it_cannot_decode_and_reports_it(nats_url: str) -> None:
    """A message on a PU subject that does not decode stops the feed: on_broken is called once and nothing after
    it is fed."""

    async def main() -> None:
        async with opened(nats_url) as changelog:
            (good,) = await append_values(changelog, 0, ["good"])
            await changelog.js.publish(NAMES.pu_log_subject("pu-broken"), b"\xc1")  # 0xc1 is never valid msgpack
            fed: list[int] = []
            broken: list[int] = []
            sub = await changelog.follow(0, lambda seq, subject, msg, pending: fed.append(seq), SIZE_MAX_BYTES,
                                         on_broken=lambda: broken.append(len(fed)))
            (last,) = await append_values(changelog, 0, ["after"])

            async def all_delivered() -> None:  # the server delivered up to `last` and the callback took it
                info = await sub.consumer_info()
                assert info.delivered.stream_seq == last and sub.pending_msgs == 0, (info.delivered, fed, broken)

            await eventually(all_delivered, timeout_s=5)
            assert broken == [1] and fed == [good]
            await sub.unsubscribe()

    run(main)


def test_watch_claims_delivers_the_existing_claims_then_each_new_one(nats_url: str) -> None:
    """watch_claims feeds every claim message already in the log (a claim and its confirmation each), then each new
    one, as (seq, partition, epoch, member), in order and never a PU message; a claim that does not decode is
    delivered as partition -1 (it still fences)."""

    async def main() -> None:
        async with opened(nats_url, "pu-a") as a, opened(nats_url, "pu-b") as b:
            first = await a.claim(0, 1, "pu-a", CLAIM_ATTEMPTS_MAX)
            await append_values(a, 0, ["not a claim"])
            second = await b.claim(1, 1, "pu-b", CLAIM_ATTEMPTS_MAX)
            seen: list[tuple[int, int, int, str]] = []
            sub = await a.watch_claims(lambda seq, partition, epoch, member: seen.append((seq, partition, epoch,
                                                                                          member)))

            async def seen_count(count: int) -> None:
                assert len(seen) == count, seen

            def pair(confirmed: int | None, partition: int, epoch: int, member: str) -> list[tuple[int, int, int, str]]:
                assert confirmed is not None
                return [(confirmed - 1, partition, epoch, member), (confirmed, partition, epoch, member)]

            await eventually(lambda: seen_count(4), timeout_s=5)
            assert seen == pair(first, 0, 1, "pu-a") + pair(second, 1, 1, "pu-b")
            await append_values(b, 1, ["still not a claim"])
            third = await b.claim(0, 2, "pu-b", CLAIM_ATTEMPTS_MAX)
            await eventually(lambda: seen_count(6), timeout_s=5)
            assert seen[-2:] == pair(third, 0, 2, "pu-b")
            garbage = await a.js.publish(NAMES.claim_subject(3), b"\xc1")
            await eventually(lambda: seen_count(7), timeout_s=5)
            assert seen[-1] == (garbage.seq, -1, 0, "")
            await sub.unsubscribe()

    run(main)


def test_trim_drops_older_pu_messages_and_keeps_every_claim(nats_url: str) -> None:
    """trim(keep_from_seq) deletes every PU subject's messages before keep_from_seq and keeps that one and later
    ones; claims before it stay (the fence reads them), and an append fenced on the last claim is still accepted."""

    async def main() -> None:
        async with opened(nats_url, "pu-a") as a, opened(nats_url, "pu-b") as b:
            early_claim = await a.claim(0, 1, "pu-a", CLAIM_ATTEMPTS_MAX)
            assert early_claim is not None
            seqs = await append_values(a, 0, ["a0", "a1"])
            seqs += await append_values(b, 1, ["b0"])
            late_claim = await b.claim(1, 1, "pu-b", CLAIM_ATTEMPTS_MAX)
            assert late_claim is not None
            seqs += await append_values(a, 0, ["a2"])
            seqs += await append_values(b, 1, ["b1"])
            await a.trim(seqs[2])
            fed, _ = await replayed(a, 0, seqs[-1])
            assert fed == [(seqs[2], [(1, "b0")]), (seqs[3], [(0, "a2")]), (seqs[4], [(1, "b1")])]
            for gone in seqs[:2]:
                with pytest.raises(NotFoundError):
                    await a.js.get_msg(NAMES.stream, gone)
            kept = await a.js.get_msg(NAMES.stream, early_claim)
            assert kept.subject == NAMES.claim_subject(0) and decode_claim(kept.data) == (1, "pu-a")
            assert await a.last_sequence(NAMES.claim_subject(0)) == early_claim
            assert await claims_seq(a) == late_claim
            assert await a.last_sequence(NAMES.pu_log_subject("pu-a")) == seqs[3]
            assert await a.append(message(0, "a3"), late_claim) > seqs[-1]

    run(main)


def test_an_append_without_a_stream_fails_at_once_with_grid_unavailable(nats_url: str) -> None:
    """An append (or a claim) to a subject no stream takes is answered by NATS (no responders): GridUnavailable,
    well before the append timeout, never a hang."""

    async def main() -> None:
        async with opened(nats_url, names=Names("nostream"), with_stream=False, append_timeout_s=30.0) as changelog:
            with pytest.raises(GridUnavailable, match="did not take the append"):
                await asyncio.wait_for(changelog.append(message(0, "a"), 0), 10)
            with pytest.raises(GridUnavailable, match="did not take the append"):
                await asyncio.wait_for(changelog.claim(0, 1, "pu-a", CLAIM_ATTEMPTS_MAX), 10)

    run(main)


def test_an_append_nobody_acknowledges_is_commit_unknown_after_the_timeout(nats_url: str) -> None:
    """An append that gets no acknowledgement within append_timeout_s (here a plain subscriber takes the PU's
    subject and never answers) raises CommitUnknown: it may or may not have been applied."""

    async def main() -> None:
        names = Names("silent")
        async with opened(nats_url, "pu-a", names=names, with_stream=False, append_timeout_s=0.3) as changelog:
            sink = await changelog.nc.subscribe(names.pu_log_subject("pu-a"))
            await changelog.nc.flush()
            with pytest.raises(CommitUnknown, match="no append acknowledgement"):
                await changelog.append(message(0, "a"), 0)
            await sink.unsubscribe()

    run(main)
