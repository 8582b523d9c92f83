"""Change feeds and continuous queries against real PUs: per key no change missed, duplicated or reordered across a
PU SIGKILL and a NATS node kill; resuming from a stored position; a continuous query equal to a model."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess  # nosec B404  # the CLI under test: an argv list, no shell
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from spacegrid import Client, Limits
from spacegrid.core.feed import Change
from spacegrid.errors import SpacegridError
from spacegrid.launcher import LocalGrid
from spacegrid.testing.apps import APP
from spacegrid.testing.fixtures import TEST_PU_ARGS

KEYS = [f"c{i}" for i in range(24)]


class Collector:
    """Reads a feed into per-key lists until told to stop at a log position."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.by_key: dict[str, list[Change]] = defaultdict(list)
        self.arrived = asyncio.Event()

    async def run(self, client: Client, map_name: str | None, **options: object) -> None:
        async for change in client.listen(map_name, **options):  # type: ignore[arg-type]
            self.changes.append(change)
            self.by_key[change.key].append(change)
            self.arrived.set()


async def increments(client: Client, ops: int, workers: int, acked: dict[str, list[int]],
                     on_progress: Callable[[int], None] = lambda done: None, seed: int = 1) -> list[BaseException]:
    """`ops` increments of random KEYS by `workers` (bounded in count); each acknowledged result kept per key."""
    rng = random.Random(seed)
    done = 0
    errors: list[BaseException] = []

    async def worker() -> None:
        nonlocal done
        while done < ops:
            done += 1
            on_progress(done)
            key = rng.choice(KEYS)
            try:
                acked[key].append(int(await client.execute("incr", key)))
            except SpacegridError as exc:
                errors.append(exc)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return errors


def check_counter_feed(collected: Collector, acked: dict[str, list[int]], finals: dict[str, int]) -> None:
    """Per key the feed holds the counter's values 1, 2, ... its final value, in order, once each: nothing missed,
    duplicated or reordered; and every acknowledged increment is among them."""
    for key in KEYS:
        values = [change.value for change in collected.by_key.get(key, [])]
        assert values == list(range(1, finals.get(key, 0) + 1)), (key, values[:20], finals.get(key))
        versions = [change.version for change in collected.by_key.get(key, [])]
        assert versions == sorted(set(versions)), (key, versions[:20])
        assert set(acked.get(key, [])) <= set(values), key
    positions = [change.position for change in collected.changes]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)


async def drain_until_end(client: Client, collected: Collector, task: asyncio.Task[None], timeout_s: float) -> None:
    """Wait (on the feed's own progress) until it delivered a marker write made after everything else."""
    value = await client.execute("incr", "feed-end-marker")
    loop = asyncio.get_running_loop()
    deadline_s = loop.time() + timeout_s
    while not any(c.key == "feed-end-marker" and c.value == value for c in collected.changes):
        assert not task.done(), task.exception() if task.done() else None
        collected.arrived.clear()
        await asyncio.wait_for(collected.arrived.wait(), max(deadline_s - loop.time(), 0.01))


async def counters_under_fault(client: Client, ops: int, fault_at: int, fault: Callable[[], None],
                               drain_s: float) -> None:
    """Increments by 8 workers with `fault` after `fault_at` of them, read by a feed of the counters map from before
    the load: then the feed is checked against the counters (check_counter_feed)."""
    collected = Collector()
    start = (await client.transport.log_bounds(client.names))[1]  # the feed reads from before the first increment
    task = asyncio.create_task(collected.run(client, "counters", from_=start))
    acked: dict[str, list[int]] = defaultdict(list)
    fired = []

    def maybe_fault(done: int) -> None:
        if done == fault_at and not fired:
            fault()
            fired.append(done)

    errors = await increments(client, ops, 8, acked, maybe_fault)
    assert fired and not errors, errors[:3]
    finals = {key: int(await client.get("counters", key) or 0) for key in KEYS}
    await drain_until_end(client, collected, task, drain_s)
    task.cancel()
    check_counter_feed(collected, acked, finals)


def test_feed_survives_pu_sigkill_without_missing_duplicating_or_reordering(
        grid_factory: Callable[..., LocalGrid]) -> None:
    """A feed of the counters map read while the owner of half the partitions is SIGKILLed mid-load: per key it
    holds every committed value exactly once, in order, and every acknowledged increment."""
    grid = grid_factory(app=APP, pus=2)

    async def main() -> None:
        limits = Limits(call_deadline_s=20.0)
        async with await Client.connect(grid.space, grid.url, limits, access=grid.access) as client:
            everything = Collector()
            start = (await client.transport.log_bounds(client.names))[1]
            task_all = asyncio.create_task(everything.run(client, None, from_=start))
            await counters_under_fault(client, 1200, 400, grid.pus[0].kill, 30)
            await drain_until_end(client, everything, task_all, 30)
            task_all.cancel()
            await client.put("kv", "other-map", 1)
            assert {c.map for c in everything.changes} == {"counters"}
            async for change in client.listen(None, from_=str(everything.changes[-1].position)):
                assert (change.map, change.key) == ("kv", "other-map")
                break

    asyncio.run(asyncio.wait_for(main(), 120))


def test_feed_resumes_after_a_stored_position_and_filters_a_key(grid_factory: Callable[..., LocalGrid]) -> None:
    """A reader that stops after any change and resumes from its position gets exactly the changes after it; a
    feed of one key gets that key's changes only."""
    grid = grid_factory(app=APP, pus=1)

    async def main() -> None:
        async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
            start = (await client.transport.log_bounds(client.names))[1]
            acked: dict[str, list[int]] = defaultdict(list)
            assert not await increments(client, 300, 4, acked)
            finals = {key: int(await client.get("counters", key) or 0) for key in KEYS}
            whole = Collector()
            task = asyncio.create_task(whole.run(client, "counters", from_=start))
            await drain_until_end(client, whole, task, 20)
            task.cancel()
            check_counter_feed(whole, acked, finals)
            # resume after the 37th change, as a reader that stored its position would
            cut = whole.changes[36]
            resumed: list[Change] = []
            async for change in client.listen("counters", from_=str(cut.position)):
                resumed.append(change)
                if len(resumed) == len(whole.changes) - 37:
                    break
            assert [(c.key, c.version) for c in resumed] == [(c.key, c.version) for c in whole.changes[37:]]
            one: list[Change] = []
            async for change in client.listen("counters", key="c3", from_=start):
                one.append(change)
                if len(one) == finals["c3"]:
                    break
            assert [c.value for c in one] == list(range(1, finals["c3"] + 1))

    asyncio.run(asyncio.wait_for(main(), 90))


def test_continuous_query_equals_a_model_under_writes_and_failover(grid_factory: Callable[..., LocalGrid]) -> None:
    """A continuous query of the kv entries whose value is even, started while writers run and kept through the
    SIGKILL of a PU, equals the map's matching entries read back at the end."""
    grid = grid_factory(app=APP, pus=2)

    async def main() -> None:
        limits = Limits(call_deadline_s=20.0)
        async with await Client.connect(grid.space, grid.url, limits, access=grid.access) as client:
            rng = random.Random(7)
            keys = [f"q{i}" for i in range(60)]
            for key in keys[:30]:
                await client.put("kv", key, rng.randrange(100))
            stop = asyncio.Event()

            async def writer(seed: int) -> None:
                local = random.Random(seed)
                for _ in range(400):  # bounded in count
                    if stop.is_set():
                        return
                    key = local.choice(keys)
                    if local.random() < 0.2:
                        await client.delete("kv", key)
                    else:
                        await client.put("kv", key, local.randrange(100))

            writers = [asyncio.create_task(writer(seed)) for seed in range(4)]
            applied: dict[str, list[int]] = defaultdict(list)
            query = await client.continuous_query("kv", where=lambda key, value: key.startswith("q")
                                                  and isinstance(value, int) and value % 2 == 0,
                                                  on_change=lambda c: applied[c.key].append(c.version))
            try:
                grid.pus[1].kill()
                await asyncio.gather(*writers)
                await query.sync(30)
                expected = {}
                for key in keys:
                    value = await client.get("kv", key)
                    if value is not None and value % 2 == 0:
                        expected[key] = value
                assert query.entries == expected
                assert all(versions == sorted(set(versions)) for versions in applied.values()), "each change once"
                assert applied, "the view changed while the writers ran"
            finally:
                stop.set()
                await query.close()

    asyncio.run(asyncio.wait_for(main(), 120))


def test_feed_survives_a_nats_node_kill(tmp_path: Path) -> None:
    """On a 3-node NATS cluster, a feed read while one node is SIGKILLed mid-load holds per key every committed
    value once, in order."""
    grid = LocalGrid(tmp_path / "grid", APP, pu_args=TEST_PU_ARGS, nats_cluster=3)
    try:
        grid.start(2)
        grid.wait_ready(90, members=2)

        async def main() -> None:
            async with await Client.connect(grid.space, grid.url, Limits(call_deadline_s=30.0),
                                            access=grid.access) as client:
                await counters_under_fault(client, 900, 300, grid.nats_nodes[0].kill, 60)

        asyncio.run(asyncio.wait_for(main(), 180))
    finally:
        grid.stop()


def test_the_listen_command_prints_changes_and_resumes_after_a_printed_position(
        grid_factory: Callable[..., LocalGrid]) -> None:
    """`spacegrid listen counters --from 0 --json` prints each committed change with its position; run again
    `--from` the second one's position, it prints the third on; a position junk is refused with what to give."""
    grid = grid_factory(app=APP, pus=1)

    async def write() -> None:
        async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
            for _ in range(3):
                await client.execute("incr", "cli-counter")

    asyncio.run(write())

    def listen(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "spacegrid.cli.main", "listen", "counters", *args, "--data-dir",
                               str(grid.data_dir)], capture_output=True, text=True, timeout=60, check=False)

    done = listen("--from", "0", "--limit", "3", "--json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(line["kind"], line["key"], line["value"]) for line in lines] == [("put", "cli-counter", n)
                                                                              for n in (1, 2, 3)]
    again = listen("--from", lines[1]["position"], "--limit", "1", "--json")
    assert [json.loads(line)["value"] for line in again.stdout.splitlines()] == [3]
    refused = listen("--from", "yesterday", "--limit", "1")
    assert refused.returncode != 0 and "not a change feed position" in refused.stdout + refused.stderr
