"""Faults with real processes: full-grid SIGKILL and restart, SIGKILL of one PU under load, a paused deposed PU."""

from __future__ import annotations

import asyncio
import signal
from typing import Any, Callable

import nats

from spacegrid.engine.connection import nats_options
from spacegrid import Client, Limits, SpacegridError, codec, protocol
from spacegrid.engine.coordination import Coordination
from spacegrid.engine.subjects import Names
from spacegrid.launcher import LocalGrid
from spacegrid.testing.apps import APP, space
from spacegrid.testing.eventually import eventually, eventually_sync
from spacegrid.testing.fixtures import TEST_PU_ARGS
from tests.integration.rawnats import collect_replies
from tests.integration.workload import FaultAt, History, check_history, write_load


def test_full_grid_sigkill_and_restart_loses_no_acknowledged_write(grid_factory: Callable[..., LocalGrid]) -> None:
    """SIGKILL of every PU and of nats-server mid-load, then a restart: every acknowledged write is there."""
    grid = grid_factory(app=APP, pus=2)
    history = History()
    killed = asyncio.Event()

    async def load_then_kill() -> None:
        short = Limits(call_deadline_s=2.0, attempt_timeout_s=1.0)
        async with await Client.connect(grid.space, grid.url, short, access=grid.access) as client:

            def maybe_kill(done: int) -> bool:
                if done == 600 and not killed.is_set():
                    for pu in grid.pus:
                        pu.kill()
                    assert grid.nats is not None
                    grid.nats.kill()
                    killed.set()
                return killed.is_set()

            await write_load(client, history, ops=2000, workers=8, time_budget_s=20, on_progress=maybe_kill)

    try:
        asyncio.run(asyncio.wait_for(load_then_kill(), 60))
    except Exception:
        pass  # the client loses its server mid-run: what matters is what it was told before
    assert killed.is_set() and len(history.acked_puts) >= 100
    assert grid.nats is not None
    grid.nats.start()
    grid.pus.clear()
    for _ in range(2):
        grid.add_pu()
    grid.wait_ready(60, members=2)

    async def verify() -> None:
        async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
            await check_history(client, history, exact=False)

    asyncio.run(verify())


def test_sigkill_of_one_of_three_pus_under_load_loses_nothing(grid_factory: Callable[..., LocalGrid]) -> None:
    """A writer running while one of three PUs is SIGKILLed finishes without errors; counters are exact."""
    grid = grid_factory(app=APP, pus=3)
    history = History()
    victim = grid.pus[1]

    async def main() -> float:
        async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
            kill = FaultAt(500, victim.kill)
            await write_load(client, history, ops=3000, workers=16, time_budget_s=60, on_progress=kill)
            assert kill.fired, "the load ended before the kill"
            await check_history(client, history, exact=True)
            return history.slowest_s

    slowest_s = asyncio.run(main())
    assert history.errors == []
    assert history.acked_puts.keys() == history.attempted_puts
    print(f"\nslowest call across the SIGKILL: {slowest_s:.3f}s")
    status = grid.wait_ready(30, members=2)
    assert len(set(status.table.owners)) == 2


def test_paused_deposed_pu_cannot_acknowledge_a_write(grid_factory: Callable[..., LocalGrid]) -> None:
    """A PU stopped (SIGSTOP) until its partitions moved, then resumed, acknowledges no write and serves no stale
    read for them; it then learns it was declared dead, rejoins, and gets a fair share again."""
    grid = grid_factory(app=APP, pus=3)
    before = grid.status()
    owners = {info["pid"]: member for member, info in before.members.items() if before.table.owned_by(member)}
    paused = next(pu for pu in grid.pus if pu.pid in owners)
    paused_id = owners[paused.pid]
    partition = before.table.owned_by(paused_id)[0]
    key = next(f"stale-{i}" for i in range(10_000) if space.partition_of("kv", f"stale-{i}") == partition)
    seeded_key = f"seed@{key}"

    async def seed(value: str) -> None:
        async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
            await client.put("kv", seeded_key, value)

    asyncio.run(seed("old"))

    paused.signal(signal.SIGSTOP)

    def moved_off() -> None:
        status = grid.status()
        assert status.ready and paused_id not in status.table.owners, "partitions did not move off the paused PU"

    eventually_sync(moved_off, timeout_s=30, interval_s=0.1)
    asyncio.run(seed("new"))  # the paused PU's copy of seeded_key is now stale

    async def main() -> Any:
        request = codec.encode_array([
            protocol.request(1, protocol.OP_PUT, partition, "kv", key, "from-the-past", None, "stale-op-1"),
            protocol.request(2, protocol.OP_GET, partition, "kv", seeded_key),
        ])
        async def resume() -> None:
            paused.signal(signal.SIGCONT)

        replies = await collect_replies(grid.url, Names(space.name).pu_subject(paused_id), request, 2, 10.0, resume,
                                         access=grid.access)
        async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
            return replies, await client.get("kv", key)

    replies, stored = asyncio.run(main())
    by_id = {reply[0]: reply for reply in replies}
    assert by_id[1][1] in ("not_owner", "fenced", "unavailable"), replies
    assert stored is None
    assert by_id[2][1] in ("not_owner", "unavailable"), f"a stale read was served: {replies}"
    status = grid.wait_ready(30, members=3)
    assert sorted(len(status.table.owned_by(m)) for m in set(status.table.owners)) == [5, 5, 6]


def test_a_joining_pu_gets_a_fair_share_while_writes_go_on(grid_factory: Callable[..., LocalGrid]) -> None:
    """A third PU joining under load takes floor/ceil of the partitions, catching up at most two backups at a
    time (--catch-ups-max 2) with the others waiting, as every heartbeat record any PU wrote from before the join
    until the joiner's catch-up was over shows (watched in the KV); no call fails and counters stay exact."""
    grid = grid_factory(app=APP, pus=2, pu_args=[*TEST_PU_ARGS, "--catch-ups-max", "2"])
    history = History()
    beats: list[tuple[str, dict[str, Any]]] = []  # every heartbeat record written while the test watched, in order

    async def main() -> Any:  # the grid's status once the joiner caught up
        nc = await nats.connect(grid.url, **nats_options(grid.access))
        coord = await Coordination.open(nc.jetstream(), Names(space.name))

        async def on_member(member_id: str, value: bytes | None, revision: int) -> None:
            if value is not None:
                beats.append((member_id, coord.decode_member(value)))

        watch = await coord.watch(coord.members, ">", on_member)
        try:
            await eventually(lambda: _assert_beats_from(beats, 2), timeout_s=10)  # watching before the join
            async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
                join = FaultAt(300, grid.add_pu)
                await write_load(client, history, ops=2400, workers=8, time_budget_s=60, on_progress=join)
                assert join.fired
                await check_history(client, history, exact=True)
            status = await asyncio.to_thread(grid.wait_ready, 30, None, 3)
            joiner = next(member for member, info in status.members.items() if info["pid"] == grid.pus[2].pid)

            def joiner_caught_up() -> None:
                last = [info for member, info in beats if member == joiner][-1]
                assert last["backups_catching_up"] == 0 and last["backups_waiting"] == 0, last
                assert last["ready_backups"] or status.table.owned_by(joiner), last

            await eventually(joiner_caught_up, timeout_s=30)
            return status
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            await nc.close()

    status = asyncio.run(main())
    assert history.errors == []
    catching_up = [int(info["backups_catching_up"]) for _, info in beats]
    assert max(catching_up) <= 2, f"more than 2 backups caught up at once: {max(catching_up)}"
    assert any(info["backups_catching_up"] == 2 and info["backups_waiting"] > 0 for _, info in beats), (
        "no heartbeat showed the throttle at work (2 backups catching up while others waited): the join tested "
        "nothing about the bound")
    shares = sorted(len(status.table.owned_by(member)) for member in set(status.table.owners))
    assert shares == [5, 5, 6]


def _assert_beats_from(beats: list[tuple[str, dict[str, Any]]], members: int) -> None:
    seen = sorted({member for member, _ in beats})
    assert len(seen) >= members, f"heartbeat records seen from {seen} only"


def test_graceful_leave_hands_off_under_load_without_failing_a_call(grid_factory: Callable[..., LocalGrid]) -> None:
    """SIGTERM to one of three PUs under load: it migrates its partitions away first; no call fails, counters
    are exact, and it exits cleanly once it owns and backs up nothing."""
    grid = grid_factory(app=APP, pus=3)
    history = History()
    leaver = grid.pus[0]

    async def main() -> None:
        async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
            leave = FaultAt(300, lambda: leaver.signal(signal.SIGTERM))
            await write_load(client, history, ops=2400, workers=8, time_budget_s=60, on_progress=leave)
            assert leave.fired
            await check_history(client, history, exact=True)

    asyncio.run(main())
    assert history.errors == []
    assert leaver.popen.wait(timeout=30) == 0
    status = grid.wait_ready(30, members=2)
    assert all(len(status.table.backups_of(p)) == 1 for p in range(status.table.partition_count))


def test_backups_are_promoted_when_an_owner_dies(grid_factory: Callable[..., LocalGrid]) -> None:
    """Every partition has a ready hot backup on another PU; after a SIGKILL the backups take over (promoted)."""
    grid = grid_factory(app=APP, pus=3)

    def backups_ready() -> None:
        status = grid.status()
        for p in range(status.table.partition_count):
            (backup,) = status.table.backups_of(p)
            assert backup != status.table.owner(p)
            assert p in status.members[backup]["ready_backups"]

    eventually_sync(backups_ready, timeout_s=20)
    grid.pus[1].kill()
    status = grid.wait_ready(30, members=2)
    promoted = sum(int(info.get("promoted", 0)) for m, info in status.members.items() if status.alive(m))
    assert promoted >= 4


def test_pus_ride_out_a_restart_of_the_embedded_nats_server(grid_factory: Callable[..., LocalGrid]) -> None:
    """SIGKILL and restart of the single nats-server under live PUs: reads and writes work again soon after,
    and acknowledged writes from before are there."""
    grid = grid_factory(app=APP, pus=2)

    async def write(key: str, value: int) -> int:
        async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
            return await client.put("kv", key, value)

    asyncio.run(write("before-restart", 1))
    assert grid.nats is not None
    grid.nats.kill()
    grid.nats.start()

    async def read_and_write() -> None:
        async with await Client.connect(grid.space, grid.url, Limits(call_deadline_s=3.0, attempt_timeout_s=1.0), access=grid.access) as c:
            assert await c.get("kv", "before-restart") == 1
            await c.put("kv", "after-restart", 2)
            assert await c.get("kv", "after-restart") == 2

    def served() -> None:
        try:
            asyncio.run(read_and_write())
        except SpacegridError as exc:
            raise AssertionError(f"not served yet: {exc}") from exc

    eventually_sync(served, timeout_s=30, interval_s=0.5)
