"""The PU's lifecycle driver, serving path and appender in one process against a real nats-server: recovery
steps, the subscription race, fencing of a deposed owner, bounded queues."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import nullcontext
from dataclasses import dataclass, replace

import pytest

from spacegrid import codec, protocol
from spacegrid.core.lifecycle import State
from spacegrid.core.logformat import encode_pu_message
from spacegrid.core.partition import LOG_WRITES
from spacegrid.engine.subjects import Names
from spacegrid.engine.transport import MessageHandler, Subscription, Transport
from spacegrid.limits import Limits
from spacegrid.partitioning import PartitionTable
from spacegrid.space import Space
from spacegrid.testing.eventually import eventually
from spacegrid.unit.appender import Appender
from spacegrid.unit.backups import Backups
from spacegrid.unit.claims import ClaimView
from spacegrid.unit.logguard import LogGuard
from spacegrid.unit.driver import Driver
from spacegrid.unit.membership import MembershipAgent
from spacegrid.unit.replies import Replies
from spacegrid.unit.serving import PING, Server
from spacegrid.unit.slot import Slot

space = Space("drivertest", partitions=4, backup_count=0)
space.map("kv")
LIMITS = Limits()


class GatedTransport(Transport):
    """A real transport whose subscribe waits for a gate first: the test decides when a subscription opens."""

    gate: asyncio.Event

    async def subscribe(self, subject: str, handler: MessageHandler) -> Subscription:
        if ".p." in subject:
            await self.gate.wait()
        return await super().subscribe(subject, handler)


@dataclass
class Unit:
    """The parts of one PU that the driver needs, wired as unit/pu.py wires them (no heartbeats, no watches:
    the test sets the table)."""

    member_id: str
    transport: GatedTransport
    driver: Driver
    membership: MembershipAgent
    claims: ClaimView
    appender: Appender
    server: Server

    def set_table(self, table: PartitionTable) -> None:
        self.membership.table = table
        self.membership.epochs.observe(table)
        self.driver.reconcile()


async def start_unit(url: str, member_id: str, limits: Limits = LIMITS) -> Unit:
    names = Names(space.name)
    transport = await GatedTransport.connect(url, member_id)
    transport.gate = asyncio.Event()
    transport.gate.set()
    await transport.ensure_stream(names, 1, 2 * limits.append_bytes_max)
    coord = await transport.coordination(names, create=True)
    changelog = transport.changelog(names, member_id, limits.append_timeout_s)
    await changelog.start()
    holder: dict[str, Driver] = {}

    def claimed_elsewhere(partition: int) -> None:  # claims are delivered from before the driver exists
        if "d" in holder:
            holder["d"].claimed_elsewhere(partition)

    claims = ClaimView(changelog, member_id, claimed_elsewhere)
    await claims.start(limits.bootstrap_timeout_s, limits.bootstrap_retry_s)
    replies = Replies(transport, limits)
    slots: dict[int, Slot] = {}
    appender = Appender(changelog, claims, limits, replies,
                        on_settled=lambda slot, error: holder["d"].append_settled(slot, error), kick_store=lambda: None,
                        guard=LogGuard(changelog, limits, on_restored=lambda: claims.restart(
                            limits.bootstrap_timeout_s, limits.bootstrap_retry_s)))
    backups = Backups(changelog, space, limits, nullcontext, None)
    membership = MembershipAgent(transport, coord, names, member_id, limits, space.partitions, 0, info=lambda: {},
                                 on_table=lambda: None, on_declared_dead=lambda: None)
    membership.lease_until_s = float("inf")  # no heartbeats here: reads are always within the lease
    server = Server(space, limits, member_id, transport, replies, appender, backups, None, slots,
                    lease_valid=membership.lease_valid, table_version=lambda: membership.table.version)
    driver = Driver(space, limits, names, member_id, nullcontext, transport, changelog, None, backups, appender,
                    membership, server.on_message, slots)
    holder["d"] = driver
    await transport.subscribe(names.pu_subject(member_id), server.on_message)
    return Unit(member_id, transport, driver, membership, claims, appender, server)


@pytest.fixture
async def url(nats_url: str) -> AsyncIterator[str]:
    yield nats_url


def table(version: int, owner: str, epoch: int) -> PartitionTable:
    return PartitionTable(version, (owner,) * space.partitions, (epoch,) * space.partitions)


async def ask(transport: Transport, subject: str, *requests: list[object]) -> list[list[object]]:
    """One request message, its batched reply decoded."""
    inbox = transport.new_inbox()
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def on_reply(msg: object) -> None:
        if not got.done():
            got.set_result(msg.data)  # type: ignore[attr-defined]

    sub = await transport.subscribe(inbox, on_reply)
    try:
        await transport.publish(subject, codec.encode(list(requests)), reply=inbox)
        return list(codec.decode(await asyncio.wait_for(got, 5), 1 << 20))
    finally:
        await sub.unsubscribe()


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_a_partition_recovers_fences_and_serves(nats_url: str) -> None:
    """Given the table, the driver claims each partition in the log, replays up to its claim and serves writes
    that are acknowledged only once appended; the partition's own subject answers."""

    async def main() -> None:
        unit = await start_unit(nats_url, "pu-a")
        unit.set_table(table(1, "pu-a", 1))

        def all_active() -> None:
            assert unit.driver.partitions_in(State.ACTIVE) == list(range(space.partitions))

        await eventually(all_active)
        key = "k1"
        partition = space.partition_of("kv", key)
        put = protocol.request(1, protocol.OP_PUT, partition, "kv", key, "v1", None, "op-1")
        [[req_id, status, version]] = await ask(unit.transport, Names(space.name).pu_subject("pu-a"), codec.decode(put, 1 << 20))
        assert (req_id, status) == (1, protocol.OK) and version > 0
        assert await unit.transport.probe(Names(space.name).partition_subject(partition), PING, 1.0) is True
        assert unit.appender.counters["appends"] == 1
        await unit.transport.close()

    run(main())


def test_release_during_the_subscribe_leaves_no_subscription(nats_url: str) -> None:
    """Regression for the old PU's race: the partition is released while its subscription is being opened; once
    the subscribe completes it is closed again, so nobody answers on the partition's subject."""

    async def main() -> None:
        unit = await start_unit(nats_url, "pu-a")
        unit.transport.gate.clear()
        unit.set_table(table(1, "pu-a", 1))

        def all_subscribing() -> None:
            assert unit.driver.partitions_in(State.SUBSCRIBING) == list(range(space.partitions))

        await eventually(all_subscribing)
        unit.set_table(table(2, "pu-b", 2))
        assert unit.driver.slots == {}
        unit.transport.gate.set()

        async def no_responders() -> None:
            for partition in range(space.partitions):
                subject = Names(space.name).partition_subject(partition)
                assert await unit.transport.probe(subject, PING, 1.0) is False, f"partition {partition} answered"

        await eventually(no_responders)
        assert not unit.driver._subs
        await unit.transport.close()

    run(main())


async def activated(second: Unit) -> Unit:
    """The unit claims every partition at epoch 2 under a table of its own, and serves them all."""
    second.set_table(table(2, "pu-b", 2))
    await eventually(lambda: _assert(second.driver.partitions_in(State.ACTIVE) == list(range(space.partitions))))
    return second


def test_a_pu_taking_over_every_partition_replays_them_a_bounded_number_at_a_time(nats_url: str) -> None:
    """A PU takes over the 4 partitions another PU wrote to, with limits.replays_at_once_max 1: it replays all 4
    (each a consumer of the log), one at a time (never two at once: a PU taking over dozens no longer floods its
    connection), and serves every write the first PU acknowledged."""

    async def main() -> None:
        first = await start_unit(nats_url, "pu-a")
        first.set_table(table(1, "pu-a", 1))
        await eventually(lambda: _assert(first.driver.partitions_in(State.ACTIVE) == list(range(space.partitions))))
        keys = {space.partition_of("kv", f"k{i}"): f"k{i}" for i in range(64)}
        assert len(keys) == space.partitions
        for req_id, (partition, key) in enumerate(sorted(keys.items()), 1):
            put = codec.decode(protocol.request(req_id, protocol.OP_PUT, partition, "kv", key, key, None,
                                                f"op-{req_id}"), 1 << 20)
            [[_, status, _]] = await ask(first.transport, Names(space.name).pu_subject("pu-a"), put)
            assert status == protocol.OK
        second = await activated(await start_unit(nats_url, "pu-b", replace(LIMITS, replays_at_once_max=1)))
        assert second.driver.counters["replays"] == space.partitions
        assert second.driver.counters["replays_at_once_peak"] == 1
        for req_id, (partition, key) in enumerate(sorted(keys.items()), 100):
            get = codec.decode(protocol.request(req_id, protocol.OP_GET, partition, "kv", key), 1 << 20)
            [[_, status, [value, _version]]] = await ask(second.transport, Names(space.name).pu_subject("pu-b"), get)
            assert (status, value) == (protocol.OK, key)
        await first.transport.close()
        await second.transport.close()

    run(main())


def test_a_deposed_owner_never_acknowledges_a_write(nats_url: str) -> None:
    """A second PU claims the partitions at a newer epoch while the first PU's view of the claims lags behind (its
    claim watch is paused): the first PU's next write is appended fenced on the claims it had seen, the log refuses
    it, and once its view caught up it answers Fenced (not applied) and drops every partition; its re-acquisition
    under the stale table finds the newer claims and gives up, so it never serves them again."""

    async def main() -> None:
        first = await start_unit(nats_url, "pu-a")
        first.set_table(table(1, "pu-a", 1))
        await eventually(lambda: _assert(first.driver.partitions_in(State.ACTIVE) == list(range(space.partitions))))
        await first.claims.stop()  # the claims pu-b appends are not seen by pu-a: only the log's fence stops it
        second = await activated(await start_unit(nats_url, "pu-b"))
        key = "k2"
        partition = space.partition_of("kv", key)
        put = codec.decode(protocol.request(7, protocol.OP_PUT, partition, "kv", key, "stale", None, "op-7"), 1 << 20)
        reply = asyncio.ensure_future(ask(first.transport, Names(space.name).pu_subject("pu-a"), put))
        await eventually(lambda: _assert(first.appender.counters["fence_retries"] == 1))  # the log refused it
        await first.claims.start(LIMITS.bootstrap_timeout_s, LIMITS.bootstrap_retry_s)  # the view catches up with the refusal's claim
        [[req_id, status, _]] = await reply
        assert (req_id, status) == (7, "fenced")
        assert first.appender.counters["appends"] == 0
        await eventually(lambda: _assert(first.driver.slots == {}))
        assert first.driver.counters["fenced"] == space.partitions
        get = codec.decode(protocol.request(8, protocol.OP_GET, partition, "kv", key), 1 << 20)
        [[_, status, value]] = await ask(second.transport, Names(space.name).pu_subject("pu-b"), get)
        assert (status, value) == (protocol.OK, None), "the fenced write was not applied"
        await first.transport.close()
        await second.transport.close()

    run(main())


def test_a_claim_seen_by_the_owner_drops_its_partitions_at_once(nats_url: str) -> None:
    """When its claim view delivers another PU's claims, the first PU drops every claimed partition without
    waiting for a write to be refused, and answers a write for one of them not_owner: nothing applied, nothing
    appended."""

    async def main() -> None:
        first = await start_unit(nats_url, "pu-a")
        first.set_table(table(1, "pu-a", 1))
        await eventually(lambda: _assert(first.driver.partitions_in(State.ACTIVE) == list(range(space.partitions))))
        second = await activated(await start_unit(nats_url, "pu-b"))
        await eventually(lambda: _assert(first.driver.slots == {}))
        assert first.driver.counters["fenced"] == space.partitions
        key = "k3"
        partition = space.partition_of("kv", key)
        put = codec.decode(protocol.request(9, protocol.OP_PUT, partition, "kv", key, "stale", None, "op-9"), 1 << 20)
        [[req_id, status, _]] = await ask(first.transport, Names(space.name).pu_subject("pu-a"), put)
        assert (req_id, status) == (9, "not_owner")
        assert first.appender.counters["appends"] == 0
        get = codec.decode(protocol.request(10, protocol.OP_GET, partition, "kv", key), 1 << 20)
        [[_, status, value]] = await ask(second.transport, Names(space.name).pu_subject("pu-b"), get)
        assert (status, value) == (protocol.OK, None), "the write to the deposed owner was not applied"
        await first.transport.close()
        await second.transport.close()

    run(main())


def forged_message(partition: int, epoch: int, version: int, key: str, value: str) -> bytes:
    """A PU log message as a rogue PU credential could append on its own subject, unfenced: one write of `key`."""
    record = [f"forged:{epoch}", None, [["kv", key, version, codec.encode(value), False]]]
    return encode_pu_message([(partition, codec.encode([LOG_WRITES, epoch, [record]]))])


def test_records_the_table_never_let_their_writer_append_are_refused_on_replay(nats_url: str) -> None:
    """A rogue PU subject holds two forged writes of a key: one at its owner's epoch (the wrong writer), one at an
    epoch the table never issued. A new owner's replay refuses both (counted), applies the owner's real writes, and
    serves the acknowledged value; without the check the first forged write takes the version of the next real one,
    which then breaks the partition's invariants (a poisoned partition)."""

    async def main() -> None:
        first = await start_unit(nats_url, "pu-a")
        first.set_table(table(1, "pu-a", 1))
        await eventually(lambda: _assert(first.driver.partitions_in(State.ACTIVE) == list(range(space.partitions))))
        key = "k4"
        partition = space.partition_of("kv", key)
        subject = Names(space.name).pu_subject("pu-a")
        put = codec.decode(protocol.request(11, protocol.OP_PUT, partition, "kv", key, "v1", None, "op-11"), 1 << 20)
        [[_, status, version]] = await ask(first.transport, subject, put)
        assert status == protocol.OK
        rogue = Names(space.name).pu_log_subject("rogue")
        await first.transport.publish(rogue, forged_message(partition, 1, version + 1, key, "forged at epoch 1"))
        await first.transport.publish(rogue, forged_message(partition, 99, version + 1, key, "forged at epoch 99"))
        put = codec.decode(protocol.request(12, protocol.OP_PUT, partition, "kv", key, "v2", None, "op-12"), 1 << 20)
        [[_, status, _]] = await ask(first.transport, subject, put)
        assert status == protocol.OK
        second = await start_unit(nats_url, "pu-b")
        second.membership.epochs.observe(table(1, "pu-a", 1))  # pu-b ran while the table made pu-a the owner
        first.set_table(table(2, "pu-b", 2))
        await activated(second)
        assert second.driver.counters["records_refused"] == 2
        get = codec.decode(protocol.request(13, protocol.OP_GET, partition, "kv", key), 1 << 20)
        [[_, status, value]] = await ask(second.transport, Names(space.name).pu_subject("pu-b"), get)
        assert (status, value) == (protocol.OK, ["v2", version + 1])
        await first.transport.close()
        await second.transport.close()

    run(main())


def test_a_claim_at_an_epoch_the_table_never_issued_is_claimed_over(nats_url: str) -> None:
    """A claim at epoch 10^6 on a partition (what a rogue PU credential could append) makes its owner drop it;
    the owner's claim again finds that epoch newer than its own, reads the newest table from the bucket's leader,
    sees the table never issued it, claims over it (counted) and serves the partition again. Before, the claim
    was obeyed and the partition stayed without an owner until an operator stepped in."""

    async def main() -> None:
        unit = await start_unit(nats_url, "pu-a")
        first_table = table(1, "pu-a", 1)
        assert await unit.membership.coord.write_table(first_table, 0) is not None
        unit.set_table(first_table)
        await eventually(lambda: _assert(unit.driver.partitions_in(State.ACTIVE) == list(range(space.partitions))))
        key = "k5"
        partition = space.partition_of("kv", key)
        await unit.transport.publish(Names(space.name).claim_subject(partition), codec.encode([10**6, "rogue"]))
        await eventually(lambda: _assert(unit.driver.counters["claims_refused"] >= 1))
        await eventually(lambda: _assert(unit.driver.partitions_in(State.ACTIVE) == list(range(space.partitions))))
        put = codec.decode(protocol.request(14, protocol.OP_PUT, partition, "kv", key, "v", None, "op-14"), 1 << 20)
        [[_, status, _]] = await ask(unit.transport, Names(space.name).pu_subject("pu-a"), put)
        assert status == protocol.OK
        await unit.transport.close()

    run(main())


def test_a_pu_at_its_bound_answers_overloaded_and_applies_nothing(nats_url: str) -> None:
    """With limits.waiters_max = 1 and one write waiting for its append, a second write in the same message is
    refused Overloaded (retryable, not applied) and the PU keeps serving."""

    async def main() -> None:
        unit = await start_unit(nats_url, "pu-a", replace(LIMITS, waiters_max=1))
        unit.set_table(table(1, "pu-a", 1))
        await eventually(lambda: _assert(unit.driver.partitions_in(State.ACTIVE) == list(range(space.partitions))))
        partition = space.partition_of("kv", "a")
        requests = [codec.decode(protocol.request(i, protocol.OP_PUT, partition, "kv", "a", i, None, f"op-{i}"), 1 << 20)
                    for i in (1, 2)]
        replies = {r[0]: r for r in await _ask_all(unit.transport, requests)}
        assert replies[1][1] == protocol.OK
        assert replies[2][1] == "overloaded"
        assert unit.server.counters["overloaded"] == 1
        get = codec.decode(protocol.request(3, protocol.OP_GET, partition, "kv", "a"), 1 << 20)
        [[_, status, entry]] = await ask(unit.transport, Names(space.name).pu_subject("pu-a"), get)
        assert status == protocol.OK and entry[0] == 1, "only the first write was applied"
        await unit.transport.close()

    run(main())


async def _ask_all(transport: Transport, requests: list[list[object]]) -> list[list[object]]:
    """Send the requests in one message and collect replies until each has one (replies may come in batches)."""
    inbox = transport.new_inbox()
    replies: list[list[object]] = []
    done = asyncio.Event()

    async def on_reply(msg: object) -> None:
        replies.extend(codec.decode(msg.data, 1 << 20))  # type: ignore[attr-defined]
        if len(replies) >= len(requests):
            done.set()

    sub = await transport.subscribe(inbox, on_reply)
    try:
        await transport.publish(Names(space.name).pu_subject("pu-a"), codec.encode(requests), reply=inbox)
        await asyncio.wait_for(done.wait(), 5)
        return replies
    finally:
        await sub.unsubscribe()


def _assert(condition: bool) -> None:
    assert condition
