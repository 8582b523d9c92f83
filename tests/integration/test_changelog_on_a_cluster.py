"""The space's log on a 3-node NATS cluster (a replicated stream), where JetStream differs from a single server in two
ways the grid must survive: an ephemeral consumer may be placed on a replica that is behind (its "nothing pending"
is not the log's end), and an append's fence is checked before the message is proposed, against the claims
applied so far (an append checked while a claim is in process lands after the claim, accepted). And it may refuse to
place a replicated stream for want of peers, which a forming cluster does for a moment."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator

import pytest
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from spacegrid.engine.changelog import Changelog, ensure_stream
from spacegrid.engine.connection import connect
from spacegrid.engine.server import NatsServerProcess, start_cluster, stop_all
from spacegrid.engine.subjects import Names
from spacegrid.engine.transport import Transport
from spacegrid.errors import Fenced, FenceBusy, GridUnavailable
from spacegrid.testing.eventually import eventually
from tests.integration.test_engine_changelog import message

SIZE_MAX_BYTES = 1 << 20
STREAM_READY_TIMEOUT_S = 30.0
TEST_TIMEOUT_S = 120.0
REPLAY_TIMEOUT_S = 30.0
CLAIM_ATTEMPTS_MAX = 20


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NatsServerProcess]]:
    """A 3-node cluster for this module's tests (each uses a space of its own); stopped afterwards."""
    nodes = start_cluster(tmp_path_factory.mktemp("nats"), 3)
    try:
        yield nodes
    finally:
        stop_all(nodes)


async def _create_stream(js: JetStreamContext, names: Names) -> str:
    """The space's R3 stream, once the cluster can place it (its meta leader knows every peer); its leader."""
    async def placed() -> None:
        try:
            await ensure_stream(js, names, replicas=3, max_msg_bytes=SIZE_MAX_BYTES)
        except NatsError as exc:
            raise AssertionError(f"the stream can not be placed yet: {exc}") from exc

    await eventually(placed, timeout_s=STREAM_READY_TIMEOUT_S, interval_s=0.2)
    info = await js.stream_info(names.stream)
    return str(info.cluster.leader if info.cluster else "")


async def _replay(changelog: Changelog, partition: int, after_seq: int, claim_seq: int) -> tuple[int, list[int]]:
    """A new owner's replay up to its claim: (the position it reports, the sequences it applied)."""
    seen: list[int] = []
    reached = await changelog.replay(after_seq, claim_seq, lambda seq, _, __: seen.append(seq), 2 * SIZE_MAX_BYTES,
                                     REPLAY_TIMEOUT_S, until_subject=changelog.names.claim_subject(partition))
    return reached, seen


# ---- a replica that is behind ----------------------------------------------------------------------------------

ROUNDS = 40
MESSAGES_PER_ROUND = 30
REPLAYS_PER_ROUND = 6
STOPPED_S = 0.15  # the lagging replica is stopped this long, then runs RUNNING_S, in turns
RUNNING_S = 0.015


def _flap(node: NatsServerProcess, stop: threading.Event) -> None:
    """SIGSTOP and SIGCONT the node in turns until `stop` is set (left running)."""
    while not stop.is_set():
        node.pause()
        stop.wait(STOPPED_S)
        node.resume()
        stop.wait(RUNNING_S)


def test_replay_reaches_its_bound_while_a_replica_lags(cluster: list[NatsServerProcess]) -> None:
    """One follower of the stream is stopped 150 ms and run 15 ms in turns; 40 rounds each append 30 messages and
    a claim, then replay them six times at once (some of those consumers are placed on the lagging follower):
    every replay applies every message of its round, in order, and reports the claim's sequence. (Ending a replay
    at the consumer's "nothing pending" skipped messages here.)"""
    names = Names("lag")
    stop = threading.Event()
    flapper: threading.Thread | None = None

    async def main() -> None:
        nonlocal flapper
        nc = await connect(cluster[0].url, "test-replay-lag")
        try:
            js = nc.jetstream()
            leader = await _create_stream(js, names)
            victim = next(node for node in cluster[1:] if node.spec.server_name != leader)  # not ours either
            flapper = threading.Thread(target=_flap, args=(victim, stop), daemon=True)
            flapper.start()
            changelog = Changelog(nc, js, names, "pu-a", 10.0)
            await changelog.start()
            short: list[tuple[int, int, int]] = []
            after_seq = 0  # the last claim: appends are fenced on it, replays start after it
            for epoch in range(1, ROUNDS + 1):
                appended = [await changelog.append(message(0, i), after_seq) for i in range(MESSAGES_PER_ROUND)]
                claim_seq = await changelog.claim(0, epoch, "pu-b", CLAIM_ATTEMPTS_MAX)
                assert claim_seq is not None and claim_seq > max(appended)
                results = await asyncio.gather(*(_replay(changelog, 0, after_seq, claim_seq)
                                                 for _ in range(REPLAYS_PER_ROUND)))
                short += [(epoch, reached, len(seen)) for reached, seen in results if seen != appended]
                assert all(reached == claim_seq for reached, _ in results)
                after_seq = claim_seq
            await changelog.stop()
            assert not short, f"{len(short)} replays missed messages (round, reached, applied): {short[:5]}"
        finally:
            await nc.close()

    try:
        asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT_S))
    finally:
        stop.set()
        if flapper is not None:
            flapper.join()


# ---- appends racing a claim ------------------------------------------------------------------------------------

RACE_ROUNDS = 60
APPENDERS = 3


async def _append_until_fenced(changelog: Changelog, fence_seq: int, acked: list[int],
                               appending: asyncio.Event) -> None:
    """The deposed owner: appends fenced on the claims it knows, recording each acknowledged one (and setting
    `appending` at the first), until refused by the fence; refusals while another append is in process are
    retried at once."""
    for i in itertools.count():
        try:
            acked.append(await changelog.append(message(0, i), fence_seq))
            appending.set()
        except FenceBusy:
            continue
        except Fenced:
            return


def test_appends_racing_a_claim_are_all_in_the_new_owners_replay(cluster: list[NatsServerProcess]) -> None:
    """In each of 60 rounds, three tasks of the owner append as fast as they can while another member claims the
    partition; every append the stream acknowledged (an owner would have answered its clients) lies before the
    claim's confirmation and is applied by the new owner's replay, including those that landed after the claim
    itself because their fence was checked while it was in process."""
    names = Names("race")

    async def main() -> None:
        nc_a = await connect(cluster[0].url, "test-race-owner")
        nc_b = await connect(cluster[1].url, "test-race-claimer")
        try:
            await _create_stream(nc_a.jetstream(), names)
            owner = Changelog(nc_a, nc_a.jetstream(), names, "pu-a", 10.0)
            claimer = Changelog(nc_b, nc_b.jetstream(), names, "pu-b", 10.0)
            await owner.start()
            await claimer.start()
            missing: list[tuple[int, list[int]]] = []
            fence_seq = 0
            for epoch in range(1, RACE_ROUNDS + 1):
                acked: list[int] = []
                appending = asyncio.Event()
                appenders = [asyncio.create_task(_append_until_fenced(owner, fence_seq, acked, appending))
                             for _ in range(APPENDERS)]
                await asyncio.wait_for(appending.wait(), REPLAY_TIMEOUT_S)
                claim_seq = await claimer.claim(0, epoch, f"pu-{epoch % 2}", CLAIM_ATTEMPTS_MAX)
                assert claim_seq is not None
                await asyncio.wait_for(asyncio.gather(*appenders), REPLAY_TIMEOUT_S)
                _, replayed = await _replay(claimer, 0, fence_seq, claim_seq)
                lost = sorted(set(acked) - set(replayed))
                if lost:
                    missing.append((epoch, lost))
                fence_seq = claim_seq
            await owner.stop()
            await claimer.stop()
            assert not missing, f"acknowledged appends the new owner never applied (round, seqs): {missing[:5]}"
        finally:
            await nc_a.close()
            await nc_b.close()

    asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT_S))


# ---- placement -------------------------------------------------------------------------------------------------


def test_a_bucket_the_cluster_cannot_place_is_unavailable_not_a_bad_request(cluster: list[NatsServerProcess]) -> None:
    """Buckets of 5 replicas on 3 nodes: JetStream refuses the placement ("no suitable peers", as a new cluster does
    until its meta leader has heard from its peers: `spacegrid up --nats-cluster 3` failed on it once); the
    transport answers GridUnavailable, which start-up retries, naming both causes, instead of a bad request that
    ends the start."""
    async def main() -> None:
        transport = await Transport.connect(cluster[0].url, "test-placement")
        try:
            with pytest.raises(GridUnavailable, match="no peers to place a replicated stream"):
                await transport.coordination(Names("unplaced"), replicas=5, create=True)
        finally:
            await transport.close()

    asyncio.run(asyncio.wait_for(main(), 30))
