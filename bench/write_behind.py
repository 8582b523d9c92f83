"""Write-behind into PostgreSQL against a row-by-row writer, in one run; and the store's lag under that load.

    .venv/bin/python bench/write_behind.py [--writes 40000] [--keys 10000] [--json out.json]

Both targets get the same writes from the same driver (one process, asyncio, 64 concurrent writers in a closed
loop): `--writes` upserts of a small JSON-like value to keys drawn uniformly from `--keys` (so repeated keys give
write-behind something to coalesce, as a session or counter store does).

Targets:
  postgres-rows  asyncpg straight to PostgreSQL: one INSERT ... ON CONFLICT DO UPDATE per write, autocommit, a pool
                 of 16 connections (what an application writing its own rows does)
  grid-wb        a fresh LocalGrid (embedded nats-server, 2 PUs) with PostgreSQL behind it (write-behind, the
                 default): the client is acknowledged once the log has the write; the pump persists in batches

For grid-wb the script also samples the PUs' write-behind lag (records and seconds, max over the run) and measures
how long after the last acknowledgement the store held every write ("drain"). A third run, grid-catch-up, cuts the
link to PostgreSQL (a loopback proxy) before the load and restores it after: the time the pump then takes to persist
the whole backlog (including the retry backoff, up to 5 s, still running when the link returns). pump-path measures
the pump's own store path without the grid: Store.persist of 500-row batches (the pump's batch size) from 4
partitions at once (the pool size), i.e. what write-behind can persist per PU. Each target writes into its own
fresh schema of the local PostgreSQL (dropped afterwards). Loopback only; bounded in writes and in time; only the
processes this script started are stopped, by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from spacegrid import Client
from spacegrid.inspect import read_status
from spacegrid.launcher import LocalGrid
from spacegrid.testing.apps import APP, space
from spacegrid.testing.tcpproxy import TcpProxy

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
CONCURRENCY = 64
TIME_LIMIT_S = 300.0  # every load loop stops here whatever the count says
MAP = "kv"  # of the test app's space: 16 partitions, write-behind


def value_of(i: int) -> dict[str, Any]:
    return {"user": f"u{i}", "cart": [i % 7, i % 11], "seen": i}


async def drive(write: Any, writes: int, keys: int, seed: int) -> float:
    """Run `writes` writes from CONCURRENCY workers; returns the seconds they took."""
    rng = random.Random(seed)
    plan = [(f"s{rng.randrange(keys)}", i) for i in range(writes)]
    cursor = iter(plan)
    deadline_s = time.monotonic() + TIME_LIMIT_S

    async def worker() -> None:
        for key, i in cursor:
            if time.monotonic() > deadline_s:
                return
            await write(key, value_of(i))

    started_s = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.monotonic() - started_s


async def pg_schema(action: str, schema: str) -> None:
    connection = await asyncpg.connect(PG_DSN)
    try:
        await connection.execute(f"{action} SCHEMA {schema}" + (" CASCADE" if action == "DROP" else ""))
    finally:
        await connection.close()


async def run_postgres_rows(writes: int, keys: int, seed: int) -> dict[str, Any]:
    schema = f"bench_wb_rows_{secrets.token_hex(3)}"
    await pg_schema("CREATE", schema)
    pool = await asyncpg.create_pool(PG_DSN, min_size=16, max_size=16, server_settings={"search_path": schema})
    try:
        await pool.execute("CREATE TABLE sessions (key TEXT PRIMARY KEY, value JSONB NOT NULL, updated_at TIMESTAMPTZ)")

        async def write(key: str, value: dict[str, Any]) -> None:
            await pool.execute("INSERT INTO sessions (key, value, updated_at) VALUES ($1, $2::jsonb, now()) "
                               "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
                               key, json.dumps(value))

        elapsed_s = await drive(write, writes, keys, seed)
        rows = await pool.fetchval("SELECT count(*) FROM sessions")
    finally:
        await pool.close()
        await pg_schema("DROP", schema)
    return {"target": "postgres-rows", "writes": writes, "seconds": round(elapsed_s, 3),
            "writes_per_s": round(writes / elapsed_s), "rows": rows}


async def run_pump_path(rows_total: int) -> dict[str, Any]:
    from spacegrid.codec import encode
    from spacegrid.store import Row, open_store

    schema = f"bench_wb_pump_{secrets.token_hex(3)}"
    await pg_schema("CREATE", schema)
    store = open_store(f"{PG_DSN}?search_path={schema}", space.name, list(space.maps))
    await store.open()
    batch_rows, partitions = 500, 4
    try:
        async def one_partition(partition: int) -> None:
            lsn = 0
            for start in range(0, rows_total // partitions, batch_rows):
                rows = [Row(MAP, f"p{partition}-{start + i}", encode(value_of(start + i)), lsn + i + 1)
                        for i in range(batch_rows)]
                lsn += batch_rows
                await store.persist(partition, rows, lsn, lsn, advance=True)

        started_s = time.monotonic()
        await asyncio.gather(*(one_partition(p) for p in range(partitions)))
        elapsed_s = time.monotonic() - started_s
    finally:
        await store.close()
        await pg_schema("DROP", schema)
    return {"target": "pump-path", "rows": rows_total, "seconds": round(elapsed_s, 3),
            "rows_per_s": round(rows_total / elapsed_s), "batch_rows": batch_rows, "partitions": partitions}


async def lag_sampler(grid: LocalGrid, stop: asyncio.Event, peaks: dict[str, float]) -> None:
    while not stop.is_set():
        status = await read_status(grid.url, space.name, space.partitions, access=grid.access)
        for info in status.members.values():
            peaks["records"] = max(peaks["records"], float(info.get("write_behind_lag_records", 0)))
            peaks["seconds"] = max(peaks["seconds"], float(info.get("write_behind_lag_s", 0.0)))
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except asyncio.TimeoutError:
            pass


async def drained(grid: LocalGrid, since_s: float, timeout_s: float) -> float:
    """Seconds until every PU, in a heartbeat sent after since_s, reports no write the store lacks."""
    deadline_s = time.monotonic() + timeout_s
    while time.monotonic() < deadline_s:
        status = await read_status(grid.url, space.name, space.partitions, access=grid.access)
        members = status.members.values()
        if members and all(float(i.get("beat", 0)) > since_s and i.get("write_behind_lag_records") == 0
                           for i in members):
            return time.time() - since_s
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the store did not catch up within {timeout_s}s")


def run_grid(writes: int, keys: int, seed: int, outage: bool) -> dict[str, Any]:
    schema = f"bench_wb_grid_{secrets.token_hex(3)}"
    asyncio.run(pg_schema("CREATE", schema))
    try:
        with tempfile.TemporaryDirectory(prefix="sg-wb-") as tmp, TcpProxy("127.0.0.1", 5432) as proxy:
            dsn = PG_DSN.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}") if outage else PG_DSN
            grid = LocalGrid(Path(tmp), APP, store=f"{dsn}?search_path={schema}")
            try:
                grid.start(2)
                grid.wait_ready(60, members=2)
                if not outage:
                    return asyncio.run(_grid_load(grid, writes, keys, seed))
                proxy.cut()
                result = asyncio.run(_grid_load(grid, writes, keys, seed, before_drain=proxy.restore))
                result["target"] = "grid-catch-up"
                return result
            finally:
                grid.stop()
    finally:
        asyncio.run(pg_schema("DROP", schema))


async def _grid_load(grid: LocalGrid, writes: int, keys: int, seed: int,
                     before_drain: Any = lambda: None) -> dict[str, Any]:
    peaks = {"records": 0.0, "seconds": 0.0}
    stop = asyncio.Event()
    async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
        sampler = asyncio.create_task(lag_sampler(grid, stop, peaks))

        async def write(key: str, value: dict[str, Any]) -> None:
            await client.put(MAP, key, value)

        elapsed_s = await drive(write, writes, keys, seed)
        before_drain()
        acked_at_s = time.time()
        drain_s = await drained(grid, acked_at_s, 120.0)
        stop.set()
        await sampler
    status = await read_status(grid.url, space.name, space.partitions, access=grid.access)
    store_rows = sum(int(i.get("store_rows", 0)) for i in status.members.values())
    flushes = sum(int(i.get("store_flushes", 0)) for i in status.members.values())
    return {"target": "grid-wb", "writes": writes, "seconds": round(elapsed_s, 3),
            "writes_per_s": round(writes / elapsed_s), "drain_s": round(drain_s, 3),
            "persisted_rows": store_rows, "store_transactions": flushes,
            "coalesced": round(1 - store_rows / writes, 3),
            "lag_records_max": int(peaks["records"]), "lag_s_max": round(peaks["seconds"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=40_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args()
    print(f"{args.writes:,} writes over {args.keys:,} keys, {CONCURRENCY} concurrent writers", file=sys.stderr)
    rows = asyncio.run(run_postgres_rows(args.writes, args.keys, args.seed))
    print(f"  postgres-rows: {rows['writes_per_s']:,} writes/s", file=sys.stderr)
    grid = run_grid(args.writes, args.keys, args.seed, outage=False)
    catch_up = run_grid(args.writes, args.keys, args.seed, outage=True)
    pump = asyncio.run(run_pump_path(args.writes))
    print(f"  grid-wb:       {grid['writes_per_s']:,} writes/s acknowledged; store drained {grid['drain_s']} s "
          f"after the last ack; {grid['persisted_rows']:,} rows in {grid['store_transactions']:,} transactions "
          f"({grid['coalesced']:.0%} coalesced); lag max {grid['lag_records_max']:,} records, "
          f"{grid['lag_s_max']} s", file=sys.stderr)
    print(f"  grid-catch-up: store cut during the load ({catch_up['writes_per_s']:,} writes/s acknowledged, lag max "
          f"{catch_up['lag_records_max']:,} records, {catch_up['lag_s_max']} s); once restored, the pump persisted "
          f"{catch_up['persisted_rows']:,} rows (coalesced from {args.writes:,} writes) within {catch_up['drain_s']} s, "
          "retry backoff included", file=sys.stderr)
    print(f"  pump-path:     {pump['rows_per_s']:,} rows/s persisted ({pump['rows_per_s'] / rows['writes_per_s']:.1f}x "
          "postgres-rows)", file=sys.stderr)
    ratio = grid["writes_per_s"] / rows["writes_per_s"]
    effective = args.writes / (grid["seconds"] + grid["drain_s"])
    print(f"grid-wb / postgres-rows: {ratio:.2f}x acknowledged; {effective / rows['writes_per_s']:.2f}x counting "
          "the drain", file=sys.stderr)
    result = {"config": vars(args) | {"json": None, "concurrency": CONCURRENCY}, "postgres_rows": rows,
              "grid_wb": grid, "grid_catch_up": catch_up, "pump_path": pump, "ratio_acknowledged": round(ratio, 2),
              "ratio_pump_path": round(pump["rows_per_s"] / rows["writes_per_s"], 2),
              "ratio_with_drain": round(effective / rows["writes_per_s"], 2)}
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
