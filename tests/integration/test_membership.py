"""Membership agents against a real nats-server: heartbeats, the coordinator's table, a silent member declared
dead (its record removed by a message delete, which no watch reports), the others forgetting it, and that member
rejoining."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import pytest

from spacegrid.engine.subjects import Names
from spacegrid.engine.transport import Transport
from spacegrid.limits import Limits
from spacegrid.security.access import Access
from spacegrid.testing.eventually import eventually
from spacegrid.unit.membership import MembershipAgent
from spacegrid.unit.serving import PING

SPACE = "membertest"
PARTITIONS = 8
LIMITS = Limits()


@dataclass
class Member:
    """One agent with what its PU would do on its callbacks recorded."""

    agent: MembershipAgent
    transport: Transport
    tables_seen: list[int] = field(default_factory=list)
    declared_dead: int = 0
    deletions_seen: list[str] = field(default_factory=list)  # members its watch reported deleted (a KV marker)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def pause(self) -> None:
        """Stop heartbeating and coordinating, as a PU whose process is paused would; its connection, watches and
        answers to probes go on (so it is found dead by its silence alone)."""
        self.agent.stopping = True
        run = self.tasks.pop()
        await asyncio.wait([run], timeout=5)
        assert run.done()

    def resume(self) -> None:
        """Heartbeat again, as a paused PU resuming."""
        self.agent.stopping = False
        self.tasks.append(asyncio.create_task(self.agent.run()))

    async def stop(self) -> None:
        self.agent.stopping = True
        for task in self.tasks:
            task.cancel()
        await asyncio.wait(self.tasks, timeout=5)
        await self.transport.close()


async def start_member(url: str, member_id: str, space: str = SPACE, access: Access | None = None) -> Member:
    """A membership agent on its own connection (with `access`: its PU credential), heartbeating and watching."""
    names = Names(space)
    transport = await Transport.connect(url, member_id, access=access)
    coord = await transport.coordination(names, create=True)
    holder: dict[str, Member] = {}

    def on_table() -> None:
        holder["m"].tables_seen.append(holder["m"].agent.table.version)

    def on_dead() -> None:
        holder["m"].declared_dead += 1

    def info() -> dict[str, object]:  # its backups are ready at once (as a PU's with an empty log)
        return {"ready_backups": holder["m"].agent.table.backed_up_by(member_id)}

    agent = MembershipAgent(transport, coord, names, member_id, LIMITS, PARTITIONS, 1, info=info,
                            on_table=on_table, on_declared_dead=on_dead)
    member = Member(agent, transport)
    holder["m"] = member

    async def answer_pings(msg: object) -> None:  # a PU answers probes on its subject
        await transport.publish(msg.reply, PING)  # type: ignore[attr-defined]

    await transport.subscribe(names.pu_subject(member_id), answer_pings)
    await agent.heartbeat()
    async def on_member(key: str, value: bytes | None, revision: int) -> None:
        if value is None:
            member.deletions_seen.append(key)
        await agent.on_member(key, value, revision)

    member.tasks = [await coord.watch(coord.members, ">", on_member),
                    await coord.watch(coord.table, names.table_key, agent.on_table_entry),
                    asyncio.create_task(agent.run())]
    return member


def test_the_coordinator_shares_partitions_and_removes_a_silent_member(nats_url: str) -> None:
    """Two members get a fair table from the coordinator (the smaller id); when one falls silent (its heartbeat
    loop stops, its connection goes), the other removes it by compare-and-set and takes every partition."""

    async def main() -> None:
        a = await start_member(nats_url, "pu-a")
        b = await start_member(nats_url, "pu-b")

        async def shared() -> None:
            table = a.agent.table
            assert sorted(len(table.owned_by(m)) for m in ("pu-a", "pu-b")) == [PARTITIONS // 2, PARTITIONS // 2]
            assert b.agent.table.version == table.version

        await eventually(shared)
        assert a.agent.lease_valid() and b.agent.lease_valid()
        await b.stop()

        async def taken_over() -> None:
            assert a.agent.table.owned_by("pu-a") == list(range(PARTITIONS))
            assert "pu-b" not in a.agent.membership.info

        await eventually(taken_over, timeout_s=10)
        assert a.agent.counters["failovers"] == 1
        await a.stop()

    asyncio.run(main())


def test_a_member_removed_while_alive_drops_out_and_joins_again(nats_url: str) -> None:
    """A member whose record the coordinator removed (as after a pause: a message delete at the revision it saw)
    finds out at its next renewal: it calls on_declared_dead, loses its lease, and registers again under a new
    incarnation."""

    async def main() -> None:
        a = await start_member(nats_url, "pu-a")
        incarnation = a.agent.incarnation

        async def removed() -> None:  # it renews every heartbeat interval: a removal at a stale revision fails
            found = await a.agent.coord.read_member("pu-a")
            assert found is not None and await a.agent.coord.remove_member("pu-a", found[1])

        await eventually(removed)

        async def rejoined() -> None:
            assert a.declared_dead == 1
            assert a.agent.counters["rejoins"] == 1
            assert a.agent.incarnation != incarnation
            assert await a.agent.coord.read_member("pu-a") is not None

        await eventually(rejoined)
        await a.stop()

    asyncio.run(main())


async def assert_removed_by(coordinator: Member, member_id: str) -> None:
    assert coordinator.agent.counters["failovers"] >= 1
    assert member_id not in coordinator.agent.membership.info
    assert await coordinator.agent.coord.read_member(member_id) is None


def test_a_paused_member_is_removed_forgotten_by_the_others_and_rejoins(nats_url: str) -> None:
    """A paused member falls silent: the coordinator removes its record (no delete marker: no watch reports it),
    the other members forget it once they read its record gone, while it is dead by its silence meanwhile; when
    it resumes, its renewal fails, it is declared dead once, joins again, and every member sees it live and the
    table gives it partitions again."""

    async def main() -> None:
        a = await start_member(nats_url, "pu-a")
        b = await start_member(nats_url, "pu-b")
        c = await start_member(nats_url, "pu-c")
        members = (a, b, c)

        async def shared(count: int) -> None:
            table = a.agent.table
            assert len({m for m in table.owners if m is not None}) == count
            for member in members:
                assert member.agent.table.version == table.version

        await eventually(lambda: shared(3), timeout_s=10)
        await b.pause()
        await eventually(lambda: assert_removed_by(a, "pu-b"), timeout_s=10)

        def forgotten() -> None:
            assert "pu-b" not in c.agent.membership.info

        await eventually(forgotten, timeout_s=5)
        assert "pu-b" not in a.deletions_seen + c.deletions_seen, "the removal left no delete marker"
        await eventually(lambda: shared(2), timeout_s=10)

        b.resume()

        async def back() -> None:
            assert b.declared_dead == 1 and b.agent.counters["rejoins"] == 1
            for member in (a, c):
                assert "pu-b" in member.agent.others_live()
            assert a.agent.table.owned_by("pu-b")

        await eventually(back, timeout_s=10)
        await eventually(lambda: shared(3), timeout_s=10)
        for member in members:
            await member.stop()

    asyncio.run(main())


def test_waiting_for_a_previous_owner_ends_once_its_record_is_removed(nats_url: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """wait_adopted (a new owner waiting for the previous one to run the table that moved a partition) ends as
    soon as it reads that the previous owner's record was removed, though no watch reported the removal, rather
    than at its bound (2 heartbeat timeouts, with a warning)."""

    async def main() -> None:
        a = await start_member(nats_url, "pu-a")
        b = await start_member(nats_url, "pu-b")
        observer = await start_member(nats_url, "pu-o")
        await observer.pause()  # it no longer forgets silent members by itself
        await b.pause()
        await eventually(lambda: assert_removed_by(a, "pu-b"), timeout_s=10)
        assert "pu-b" in observer.agent.membership.info
        with caplog.at_level(logging.WARNING, logger="spacegrid.membership"):
            await asyncio.wait_for(observer.agent.wait_adopted("pu-b", 10**6), LIMITS.heartbeat_timeout_s)
        assert "has not confirmed" not in caplog.text
        assert "pu-b" not in observer.agent.membership.info
        for member in (a, b, observer):
            await member.stop()

    asyncio.run(main())
