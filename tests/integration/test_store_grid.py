"""The grid with a durable store behind it (real PostgreSQL and SQLite): write-behind across faults, write-through,
recovery over a trimmed log, cold start, eviction with read-through, expiry, dead letters."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError

from spacegrid.engine.connection import nats_options
from spacegrid import Client, codec
from spacegrid.engine.subjects import Names
from spacegrid.launcher import LocalGrid
from spacegrid.store import open_store
from spacegrid.testing.apps import APP, DEAD_LETTERS_ENV, space
from spacegrid.testing.eventually import eventually, eventually_sync
from spacegrid.testing.fixtures import TEST_PU_ARGS
from spacegrid.testing.tcpproxy import TcpProxy
from tests.integration.rawnats import collect_replies
from tests.integration.workload import COUNTERS, FaultAt, History, check_history, write_load


def fresh_members(grid: LocalGrid, since_s: float) -> dict[str, Any]:
    """The members' statistics, each from a heartbeat sent after since_s (wall clock): older ones may predate
    what the test just did."""
    members = grid.status().members
    assert members and all(float(info.get("beat", 0)) > since_s for info in members.values()), "stale heartbeats"
    return members


def store_caught_up(grid: LocalGrid, timeout_s: float = 30.0) -> dict[str, Any]:
    """Wait until every PU's write-behind lag is zero; returns the members' statistics."""
    members: dict[str, Any] = {}
    since_s = time.time()

    def caught_up() -> None:
        nonlocal members
        members = fresh_members(grid, since_s)
        assert all(info.get("write_behind_lag_records") == 0 for info in members.values()), {
            m: (info.get("write_behind_lag_records"), info.get("store_available")) for m, info in members.items()}

    eventually_sync(caught_up, timeout_s=timeout_s)
    return members


async def store_rows(url: str, map_name: str, keys: list[str]) -> dict[str, tuple[Any, int]]:
    """What the store holds for these keys: key -> (decoded value, version)."""
    store = open_store(url, space.name, list(space.maps))
    await store.open()
    try:
        found = {}
        for key in keys:
            row = await store.load_key(map_name, key)
            if row is not None and row.value is not None:
                found[key] = (codec.decode(row.value, 1 << 20), row.version)
        return found
    finally:
        await store.close()


async def grid_entries(grid: LocalGrid, map_name: str, keys: list[str]) -> dict[str, tuple[Any, int]]:
    async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
        entries = await asyncio.gather(*(client.get_entry(map_name, key) for key in keys))
    return {key: entry for key, entry in zip(keys, entries) if entry is not None}


def assert_store_matches_grid(grid: LocalGrid, history: History) -> None:
    """After write-behind caught up, the store holds exactly what the grid holds: no write lost, none twice."""
    assert grid.store_url is not None
    keys = sorted(history.attempted_puts)
    in_grid = asyncio.run(grid_entries(grid, "kv", keys))
    in_store = asyncio.run(store_rows(grid.store_url, "kv", keys))
    assert in_store == in_grid
    counters_grid = asyncio.run(grid_entries(grid, "counters", COUNTERS))
    counters_store = asyncio.run(store_rows(grid.store_url, "counters", COUNTERS))
    assert counters_store == counters_grid


def test_write_behind_loses_and_duplicates_nothing_across_a_pu_sigkill(
        grid_factory: Callable[..., LocalGrid], pg_url: str) -> None:
    """PostgreSQL behind three PUs; one is SIGKILLed under load (its pump dies with it): the store ends up equal to
    the grid, counters exact."""
    grid = grid_factory(app=APP, pus=3, store=pg_url)
    history = History()

    async def main() -> None:
        async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
            kill = FaultAt(400, lambda: grid.pus[1].kill())
            await write_load(client, history, ops=2000, workers=8, time_budget_s=60, on_progress=kill)
            assert kill.fired
            await check_history(client, history, exact=True)

    asyncio.run(main())
    assert history.errors == []
    grid.wait_ready(30, members=2)
    store_caught_up(grid)
    assert_store_matches_grid(grid, history)


def test_a_database_outage_delays_the_store_but_not_the_grid(grid_factory: Callable[..., LocalGrid],
                                                             pg_url: str) -> None:
    """The link to PostgreSQL is cut under load: every call still succeeds, the lag grows and shows; once the link
    is back the pump catches up and the store equals the grid."""
    target = pg_url.split("@", 1)[1].split("/", 1)
    host, port = target[0].split(":")
    with TcpProxy(host, int(port)) as proxy:
        url = pg_url.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}")
        grid = grid_factory(app=APP, pus=2, store=url)
        history = History()
        seen_unavailable: list[dict[str, Any]] = []

        def cut() -> None:
            proxy.cut()

        async def main() -> None:
            async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
                await write_load(client, history, ops=1200, workers=8, time_budget_s=60, on_progress=FaultAt(200, cut))

        asyncio.run(main())
        assert history.errors == []

        def lagging() -> None:
            members = grid.status().members
            assert any(info.get("store_available") is False and info.get("write_behind_lag_records", 0) > 0
                       for info in members.values()), members
            seen_unavailable.append(members)

        eventually_sync(lagging, timeout_s=20)
        proxy.restore()
        store_caught_up(grid, timeout_s=60)
        assert_store_matches_grid(grid, history)
        asyncio.run(check_after(grid, history))


async def check_after(grid: LocalGrid, history: History) -> None:
    async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
        await check_history(client, history, exact=True)


def test_write_through_is_in_the_store_when_acknowledged(grid_factory: Callable[..., LocalGrid]) -> None:
    """A put to a write-through map is in the store, at the acknowledged version, as soon as the client holds the
    acknowledgement."""
    grid = grid_factory(app=APP, pus=2)
    assert grid.store_url is not None

    async def main() -> None:
        async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
            for i in range(20):
                version = await client.put("ledger", f"entry{i}", {"amount": i})
                stored = await store_rows(grid.store_url or "", "ledger", [f"entry{i}"])
                assert stored == {f"entry{i}": ({"amount": i}, version)}

    asyncio.run(main())


def stream_messages(grid: LocalGrid) -> int:
    async def count() -> int:
        nc = NatsClient()
        await nc.connect(grid.url, **nats_options(grid.access))
        try:
            info = await nc.jetstream().stream_info(Names(grid.space.name).stream)
            return int(info.state.messages)
        finally:
            await nc.close()

    return asyncio.run(count())


def test_a_grid_restarts_over_a_trimmed_log_and_cold_starts_from_the_store(
        grid_factory: Callable[..., LocalGrid]) -> None:
    """Writes are persisted and the log trimmed behind them; a full SIGKILL and restart recovers from the store
    plus the log's tail; then a new, empty NATS over the same store (a cold start) has every entry too."""
    grid = grid_factory(app=APP, pus=2, pu_args=[*TEST_PU_ARGS, "--log-trim-age-s", "0.5"])
    history = History()

    async def load() -> None:
        async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
            await write_load(client, history, ops=1600, workers=8, time_budget_s=60)

    asyncio.run(load())
    assert history.errors == []
    store_caught_up(grid)
    eventually_sync(lambda: _assert_below(stream_messages(grid), 200), timeout_s=20)  # 1,600 writes were appended

    grid.crash_and_restart_pus()
    asyncio.run(check_after(grid, history))

    for pu in grid.pus:
        pu.stop()
    grid.pus.clear()
    assert grid.nats is not None
    grid.nats.stop()
    nats_dir = grid.data_dir / "nats"
    _remove_tree(nats_dir)
    grid.nats.start()
    grid.write_config()  # an empty NATS holds no configuration: the launcher writes it again, as `up` would
    grid.add_pu()
    grid.add_pu()
    grid.wait_ready(60, members=2)
    asyncio.run(check_after(grid, history))

    def loaded_from_store() -> None:
        members = grid.status().members
        assert sum(int(info.get("loaded_rows", 0)) for info in members.values()) >= len(history.acked_puts)

    eventually_sync(loaded_from_store, timeout_s=10)


def _assert_below(value: int, bound: int) -> None:
    assert value < bound, f"{value} >= {bound}"


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


def test_a_bounded_map_evicts_persisted_entries_and_reads_them_through(
        grid_factory: Callable[..., LocalGrid]) -> None:
    """400 entries into a map bounded at 64 in memory: memory stays bounded, every entry reads back (from the
    store where evicted), and the misses show in the statistics."""
    grid = grid_factory(app=APP, pus=2)
    keys = [f"b{i}" for i in range(400)]

    async def write() -> None:
        async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
            await asyncio.gather(*(client.put("bounded", key, {"i": i}) for i, key in enumerate(keys)))

    asyncio.run(write())
    store_caught_up(grid)

    since_s = time.time()

    def bounded() -> None:
        members = fresh_members(grid, since_s)
        assert sum(info["maps"]["bounded"]["evictions"] for info in members.values()) >= 400 - 64
        assert sum(info["maps"]["bounded"]["entries"] for info in members.values()) <= 64

    eventually_sync(bounded, timeout_s=10)

    async def read_back() -> None:
        async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
            values = await client.get_many("bounded", keys)
            assert values == {key: {"i": i} for i, key in enumerate(keys)}
            assert await client.put("bounded", "b7", {"i": -7}, expected_version=None) > 0
            assert await client.get("bounded", "b7") == {"i": -7}

    asyncio.run(read_back())

    def counted() -> None:
        members = grid.status().members
        assert sum(info["maps"]["bounded"].get("misses", 0) for info in members.values()) >= 300
        assert sum(info["maps"]["bounded"].get("evictions", 0) for info in members.values()) >= 600

    eventually_sync(counted, timeout_s=10)


def test_entries_expire_after_their_ttl(grid_factory: Callable[..., LocalGrid]) -> None:
    """An entry of a map with a 1 s TTL reads back right after it is written and reads as absent once the TTL has
    passed (within 10 s)."""
    grid = grid_factory(app=APP, pus=2)

    async def main() -> None:
        async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
            await client.put("sessions", "s1", {"user": "ann"})
            assert await client.get("sessions", "s1") == {"user": "ann"}

            async def expired() -> None:
                assert await client.get("sessions", "s1") is None, "the session has not expired"

            await eventually(expired, timeout_s=10, interval_s=0.2)

    asyncio.run(main())


def test_a_poison_entry_goes_to_the_dead_letter_table_while_the_rest_flows(
        grid_factory: Callable[..., LocalGrid], pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trigger makes PostgreSQL reject one key for good: it lands in the dead-letter table and the compensation
    hook hears of it; every other write is persisted."""
    hook_file = tmp_path / "dead-letters.jsonl"
    monkeypatch.setenv(DEAD_LETTERS_ENV, str(hook_file))
    grid = grid_factory(app=APP, pus=2, store=pg_url)
    schema = pg_url.rsplit("search_path=", 1)[1]
    _pg(f"""CREATE FUNCTION {schema}.reject_poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF NEW.key = 'poison' THEN RAISE EXCEPTION 'poison rejected by policy'; END IF; RETURN NEW; END $$;
            CREATE TRIGGER reject_poison BEFORE INSERT OR UPDATE ON {schema}."sg_testapp__kv"
            FOR EACH ROW EXECUTE FUNCTION {schema}.reject_poison();""")
    keys = [f"k{i}" for i in range(100)] + ["poison"]

    async def write() -> None:
        async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
            await asyncio.gather(*(client.put("kv", key, key.upper()) for key in keys))

    asyncio.run(write())
    store_caught_up(grid)
    stored = asyncio.run(store_rows(pg_url, "kv", keys))
    assert sorted(stored) == sorted(keys[:-1])

    async def dead() -> list[Any]:
        store = open_store(pg_url, space.name, list(space.maps))
        await store.open()
        try:
            return list(await store.dead_letters())
        finally:
            await store.close()

    letters = asyncio.run(dead())
    assert [(letter.map, letter.key) for letter in letters] == [("kv", "poison")]
    assert "poison rejected by policy" in letters[0].error
    hooked = [json.loads(line) for line in hook_file.read_text().splitlines()]
    assert [(h["map"], h["key"], h["value"]) for h in hooked] == [("kv", "poison", "POISON")]


def _pg(sql: str) -> None:
    from spacegrid.testing.fixtures import _pg_execute

    _pg_execute(sql)


def test_graceful_stop_flushes_everything(grid_factory: Callable[..., LocalGrid]) -> None:
    """A long write-behind delay, then SIGTERM to every PU: what they held is in the store before they exit."""
    grid = grid_factory(app=APP, pus=2, pu_args=["--write-behind-delay-s", "30"])
    keys = [f"g{i}" for i in range(200)]

    async def write() -> None:
        async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
            await asyncio.gather(*(client.put("kv", key, i) for i, key in enumerate(keys)))

    asyncio.run(write())
    for pu in grid.pus:
        pu.signal(signal.SIGTERM)
    for pu in grid.pus:
        assert pu.popen.wait(timeout=60) == 0
    stored = asyncio.run(store_rows(grid.store_url or "", "kv", keys))
    assert {key: value for key, (value, _) in stored.items()} == {key: i for i, key in enumerate(keys)}


def test_reconcile_finds_and_repairs_drift_both_ways(grid_factory: Callable[..., LocalGrid], pg_url: str,
                                                     tmp_path: Path) -> None:
    """Drift injected into PostgreSQL behind the grid's back (a changed row, a deleted row, an extra row) is found
    by `spacegrid reconcile`; --repair store makes the store equal the grid, --repair grid the grid equal the store."""
    from click.testing import CliRunner

    from spacegrid.cli.main import cli
    from spacegrid.store.base import Row

    grid = grid_factory(app=APP, pus=2, store=pg_url)
    keys = [f"r{i}" for i in range(60)]

    async def write() -> None:
        async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
            await asyncio.gather(*(client.put("kv", key, i) for i, key in enumerate(keys)))

    asyncio.run(write())
    store_caught_up(grid)

    async def inject() -> None:
        store = open_store(pg_url, space.name, list(space.maps))
        await store.open()
        try:
            changed = await store.load_key("kv", "r1")
            assert changed is not None
            # (reconciliation compares versions: a row changed behind the grid's back carries another one)
            await store.write_rows(space.partition_of("kv", "r1"),
                                   [Row("kv", "r1", codec.encode("tampered"), changed.version + 1000)])
            await store.delete_keys(space.partition_of("kv", "r2"), "kv", ["r2"])
            await store.write_rows(space.partition_of("kv", "extra"), [Row("kv", "extra", codec.encode("x"), 1)])
        finally:
            await store.close()

    runner = CliRunner()
    args = ["reconcile", "--data-dir", str(grid.data_dir), "--map", "kv", "--json"]

    def reconcile(*extra: str) -> tuple[int, list[dict[str, Any]]]:
        result = runner.invoke(cli, [*args, *extra])
        drifted = [r for r in json.loads(result.stdout)["reports"] if r["drift"]]
        return result.exit_code, drifted

    assert reconcile() == (0, [])
    asyncio.run(inject())
    code, drifted = reconcile()
    assert code == 4
    found = {d["key"]: (d["grid_version"], d["store_version"]) for r in drifted for d in r["drift"]}
    assert set(found) == {"r1", "r2", "extra"} and found["extra"][0] is None and found["r2"][1] is None
    assert reconcile("--repair", "store")[0] == 0
    assert reconcile() == (0, [])
    assert asyncio.run(store_rows(pg_url, "kv", ["r1", "r2", "extra"])) == asyncio.run(
        grid_entries(grid, "kv", ["r1", "r2", "extra"]))

    asyncio.run(inject())
    assert reconcile("--repair", "grid")[0] == 0
    in_grid = asyncio.run(grid_entries(grid, "kv", ["r1", "r2", "extra"]))
    assert {key: value for key, (value, _) in in_grid.items()} == {"r1": "tampered", "extra": "x"}
    store_caught_up(grid)
    assert reconcile() == (0, [])


def log_sequences(grid: LocalGrid) -> tuple[int, int]:
    """The stream sequences of the first and the last PU message (every PU's writes; claims left out) the log
    retains (0, 0: none). The coordinator trims the whole log behind the lowest store position of all partitions."""

    async def read() -> tuple[int, int]:
        nc = NatsClient()
        await nc.connect(grid.url, **nats_options(grid.access))
        try:
            js = nc.jetstream()
            names = Names(grid.space.name)
            try:
                first = await js.get_msg(names.stream, seq=1, subject=names.pu_log_wildcard, next=True)
                last = await js.get_last_msg(names.stream, names.pu_log_wildcard)
            except NotFoundError:
                return 0, 0
            return int(first.seq or 0), int(last.seq or 0)
        finally:
            await nc.close()

    return asyncio.run(read())


TRIM_AGE_S = 5.0  # short enough for a test to see a trim, long enough to SIGKILL every PU before it reaches the retry


def test_a_retry_after_every_replica_died_still_applies_once(grid_factory: Callable[..., LocalGrid]) -> None:
    """An increment is acknowledged and persisted after the log was trimmed behind the store (by the coordinator,
    behind every partition's store position); every PU is SIGKILLed (owner and backup alike) and the grid restarts
    from the store plus the log's tail; the client's retry of the same operation id is answered from the rebuilt
    dedup window, not applied a second time (the log keeps log_trim_age_s of operation ids)."""
    from spacegrid import protocol
    from spacegrid.partitioning import PartitionTable

    grid = grid_factory(app=APP, pus=2, pu_args=[*TEST_PU_ARGS, "--log-trim-age-s", str(TRIM_AGE_S)])
    partition = space.partition_of("counters", "once")
    request = codec.encode_array([protocol.request(1, protocol.OP_EXECUTE, partition, "incr", "once", 5, None,
                                                   "client-x:1")])

    def owner_subject() -> str:
        table: PartitionTable = grid.status().table
        owner = table.owner(partition)
        assert owner is not None
        return Names(space.name).pu_subject(owner)

    def send() -> Any:
        (reply,) = asyncio.run(collect_replies(grid.url, owner_subject(), request, 1, 10, access=grid.access))
        return reply

    async def writes(prefix: str) -> None:  # on the increment's partition: the keys route by "once"
        async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
            for i in range(3):
                await client.put("counters", f"{prefix}{i}@once", i)

    asyncio.run(writes("earlier"))
    store_caught_up(grid)
    untrimmed_first, _ = log_sequences(grid)
    assert untrimmed_first > 0

    def trimmed() -> None:
        first, _ = log_sequences(grid)
        assert first > untrimmed_first, f"the log was not trimmed behind the store (first seq {first})"

    eventually_sync(trimmed, timeout_s=TRIM_AGE_S + 20, interval_s=0.2)

    assert send()[1:] == [0, 5]
    _, increment_seq = log_sequences(grid)  # only this test writes: the increment's message is the last one
    asyncio.run(writes("later"))  # so that the increment's log message is not the log's last one
    store_caught_up(grid)
    first, last = log_sequences(grid)
    assert first <= increment_seq < last, (
        f"the increment's message (seq {increment_seq}) is not in the retained log {first}..{last}: this run took "
        f"longer than log_trim_age_s ({TRIM_AGE_S} s) between the later writes and the kill")
    grid.crash_and_restart_pus()
    assert send()[1:] == [0, 5], "the retry must return the first result"
    assert asyncio.run(grid_entries(grid, "counters", ["once"]))["once"][0] == 5
