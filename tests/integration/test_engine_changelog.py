"""The partition changelog (engine/changelog.py) against a real nats-server: fenced appends accepted and rejected,
the last sequence, replay of a range, following, trimming, and appends that get no acknowledgement."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from spacegrid import codec
from spacegrid.engine.changelog import Changelog, ensure_stream
from spacegrid.engine.connection import connect
from spacegrid.engine.subjects import Names
from spacegrid.errors import CommitUnknown, Fenced, GridUnavailable
from spacegrid.testing.eventually import eventually

NAMES = Names("cl")
SIZE_MAX_BYTES = 1 << 20
APPEND_TIMEOUT_S = 5.0


@asynccontextmanager
async def opened(url: str, names: Names = NAMES, with_stream: bool = True,
                 append_timeout_s: float = APPEND_TIMEOUT_S) -> AsyncIterator[Changelog]:
    """A started Changelog on a raw connection (and the space's stream, unless with_stream is False)."""
    nc = await connect(url, "test-changelog")
    try:
        js = nc.jetstream()
        if with_stream:
            await ensure_stream(js, names, replicas=1, max_msg_bytes=SIZE_MAX_BYTES)
        changelog = Changelog(nc, js, names, append_timeout_s)
        await changelog.start()
        try:
            yield changelog
        finally:
            await changelog.stop()
    finally:
        await nc.close()


def run(main: Callable[[], Awaitable[None]], timeout_s: float = 30.0) -> None:
    asyncio.run(asyncio.wait_for(main(), timeout_s))


async def append_values(changelog: Changelog, partition: int, values: list[Any]) -> list[int]:
    """Append each value, fenced on the partition's previous message; returns their sequences."""
    seqs: list[int] = []
    last = await changelog.last_sequence(partition)
    for value in values:
        last = await changelog.append(partition, codec.encode(value), last)
        seqs.append(last)
    return seqs


async def replayed(changelog: Changelog, partition: int, after_seq: int, until_seq: int,
                   timeout_s: float = 5.0) -> list[tuple[int, Any]]:
    """What replay feeds for (after_seq, until_seq]: [(seq, decoded message)]."""
    applied: list[tuple[int, Any]] = []
    await changelog.replay(partition, after_seq, until_seq, lambda seq, message: applied.append((seq, message)),
                           SIZE_MAX_BYTES, timeout_s)
    return applied


def test_an_append_fenced_on_the_subjects_last_sequence_is_accepted(nats_url: str) -> None:
    """An append whose expected sequence is the partition subject's last one is accepted and returns the new
    stream sequence; the fence is per partition (another partition's messages do not move it), and
    last_sequence reports the subject's last message, 0 for a partition that has none."""

    async def main() -> None:
        async with opened(nats_url) as changelog:
            assert await changelog.last_sequence(0) == 0
            first = await changelog.append(0, codec.encode("a"), 0)
            other = await changelog.append(1, codec.encode("x"), 0)  # partition 1 is still empty for the fence
            second = await changelog.append(0, codec.encode("b"), first)
            assert 0 < first < other < second
            assert await changelog.last_sequence(0) == second
            assert await changelog.last_sequence(1) == other
            assert await changelog.last_sequence(2) == 0

    run(main)


def test_an_append_on_a_stale_sequence_is_fenced_and_not_applied(nats_url: str) -> None:
    """An append whose expected sequence is not the subject's last one (someone appended since, or the subject is
    not empty) raises Fenced, and the log is unchanged: a deposed owner can acknowledge nothing."""

    async def main() -> None:
        async with opened(nats_url) as changelog:
            first, second = await append_values(changelog, 0, ["mine", "new owner's marker"])
            with pytest.raises(Fenced):
                await changelog.append(0, codec.encode("stale"), first)
            with pytest.raises(Fenced):
                await changelog.append(0, codec.encode("stale"), 0)
            assert await changelog.last_sequence(0) == second
            assert await replayed(changelog, 0, 0, second) == [(first, "mine"), (second, "new owner's marker")]
            assert await changelog.append(0, codec.encode("next"), second) > second  # the right fence still works

    run(main)


def test_replay_feeds_exactly_the_partitions_messages_in_the_range(nats_url: str) -> None:
    """replay(after_seq, until_seq) feeds the partition's messages with after_seq < seq <= until_seq, in order, and
    none of another partition's; it returns the last sequence fed, does nothing for an empty range, and raises
    GridUnavailable when until_seq is not reached within its timeout."""

    async def main() -> None:
        async with opened(nats_url) as changelog:
            seqs = []
            for i in range(5):  # interleaved with partition 1's messages
                seqs += await append_values(changelog, 0, [i])
                await append_values(changelog, 1, [f"other{i}"])
            fed: list[tuple[int, Any]] = []
            last = await changelog.replay(0, seqs[1], seqs[3], lambda seq, message: fed.append((seq, message)),
                                          SIZE_MAX_BYTES, 5.0)
            assert fed == [(seqs[2], 2), (seqs[3], 3)] and last == seqs[3]
            assert await replayed(changelog, 0, 0, seqs[4]) == list(zip(seqs, range(5)))
            assert await changelog.replay(0, seqs[3], seqs[3], lambda *_: pytest.fail("fed"), SIZE_MAX_BYTES, 5.0) \
                == seqs[3]
            with pytest.raises(GridUnavailable, match="did not reach"):
                await replayed(changelog, 0, seqs[4], seqs[4] + 100, timeout_s=0.5)

    run(main)


def test_follow_feeds_the_existing_messages_then_each_new_one(nats_url: str) -> None:
    """follow(after_seq) feeds the partition's messages after after_seq, then each message appended later, with
    the count the server still has to deliver (0 once caught up), until unsubscribed."""

    async def main() -> None:
        async with opened(nats_url) as changelog:
            seqs = await append_values(changelog, 0, ["a", "b", "c"])
            await append_values(changelog, 1, ["other"])
            fed: list[tuple[int, Any, int]] = []
            sub = await changelog.follow(0, seqs[0], lambda seq, message, pending: fed.append((seq, message, pending)),
                                         SIZE_MAX_BYTES, on_broken=lambda: pytest.fail("broken"))

            async def caught_up(count: int) -> None:
                assert len(fed) == count, fed

            await eventually(lambda: caught_up(2), timeout_s=5)
            assert [(seq, message) for seq, message, _ in fed] == [(seqs[1], "b"), (seqs[2], "c")]
            assert fed[-1][2] == 0
            (fourth,) = await append_values(changelog, 0, ["d"])
            await eventually(lambda: caught_up(3), timeout_s=5)
            assert fed[-1] == (fourth, "d", 0)
            await sub.unsubscribe()

    run(main)


def test_follow_stops_at_a_message_it_cannot_decode_and_reports_it(nats_url: str) -> None:
    """A message that does not decode stops the feed: on_broken is called once and nothing after it is fed."""

    async def main() -> None:
        async with opened(nats_url) as changelog:
            (good,) = await append_values(changelog, 0, ["good"])
            await changelog.js.publish(NAMES.log_subject(0), b"\xc1")  # 0xc1 is never valid msgpack
            fed: list[int] = []
            broken: list[int] = []
            sub = await changelog.follow(0, 0, lambda seq, message, pending: fed.append(seq), SIZE_MAX_BYTES,
                                         on_broken=lambda: broken.append(len(fed)))
            (last,) = await append_values(changelog, 0, ["after"])

            async def all_delivered() -> None:  # the server delivered up to `last` and the callback took it
                info = await sub.consumer_info()
                assert info.delivered.stream_seq == last and sub.pending_msgs == 0, (info.delivered, fed, broken)

            await eventually(all_delivered, timeout_s=5)
            assert broken == [1] and fed == [good]
            await sub.unsubscribe()

    run(main)


def test_trim_drops_the_partitions_messages_before_the_kept_one_only(nats_url: str) -> None:
    """trim(keep_from_seq) deletes the partition's messages before keep_from_seq and keeps that one and later
    ones; other partitions keep all theirs, and an append fenced on the last sequence is still accepted."""

    async def main() -> None:
        async with opened(nats_url) as changelog:
            seqs = await append_values(changelog, 0, ["a", "b", "c", "d"])
            others = await append_values(changelog, 1, ["x", "y"])
            await changelog.trim(0, seqs[2])
            assert await replayed(changelog, 0, 0, seqs[3]) == [(seqs[2], "c"), (seqs[3], "d")]
            assert await replayed(changelog, 1, 0, others[1]) == [(others[0], "x"), (others[1], "y")]
            assert await changelog.last_sequence(0) == seqs[3]
            assert await changelog.append(0, codec.encode("e"), seqs[3]) > seqs[3]

    run(main)


def test_an_append_without_a_stream_fails_at_once_with_grid_unavailable(nats_url: str) -> None:
    """An append to a subject no stream takes is answered by NATS (no responders): GridUnavailable, well before
    the append timeout, never a hang."""

    async def main() -> None:
        async with opened(nats_url, names=Names("nostream"), with_stream=False, append_timeout_s=30.0) as changelog:
            with pytest.raises(GridUnavailable, match="did not take the append"):
                await asyncio.wait_for(changelog.append(0, codec.encode("a"), 0), 10)

    run(main)


def test_an_append_nobody_acknowledges_is_commit_unknown_after_the_timeout(nats_url: str) -> None:
    """An append that gets no acknowledgement within append_timeout_s (here a plain subscriber takes the subject
    and never answers) raises CommitUnknown: it may or may not have been applied."""

    async def main() -> None:
        names = Names("silent")
        async with opened(nats_url, names=names, with_stream=False, append_timeout_s=0.3) as changelog:
            sink = await changelog.nc.subscribe(names.log_subject(0))
            await changelog.nc.flush()
            with pytest.raises(CommitUnknown, match="no append acknowledgement"):
                await changelog.append(0, codec.encode("a"), 0)
            await sink.unsubscribe()

    run(main)
