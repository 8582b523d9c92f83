"""Membership agents against a real nats-server: heartbeats, the coordinator's table, a silent member declared
dead, and that member rejoining."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from spacegrid.engine.subjects import Names
from spacegrid.engine.transport import Transport
from spacegrid.limits import Limits
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
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop(self) -> None:
        self.agent.stopping = True
        for task in self.tasks:
            task.cancel()
        await asyncio.wait(self.tasks, timeout=5)
        await self.transport.close()


async def start_member(url: str, member_id: str) -> Member:
    names = Names(SPACE)
    transport = await Transport.connect(url, member_id)
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
    member.tasks = [await coord.watch(coord.members, ">", agent.on_member),
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
    """A member whose record the coordinator removed (as after a pause) finds out at its next renewal: it calls
    on_declared_dead, loses its lease, and registers again under a new incarnation."""

    async def main() -> None:
        a = await start_member(nats_url, "pu-a")
        incarnation = a.agent.incarnation
        assert await a.agent.coord.remove_member("pu-a")

        async def rejoined() -> None:
            assert a.declared_dead == 1
            assert a.agent.counters["rejoins"] == 1
            assert a.agent.incarnation != incarnation
            assert await a.agent.coord.read_member("pu-a") is not None

        await eventually(rejoined)
        await a.stop()

    asyncio.run(main())
