"""Latency while a PU joins and partitions migrate to it, with migration throttled (--catch-ups-max) or not.

    .venv/bin/python bench/migration.py [--keys 60000] [--throttles 1,4,64] [--json out.json]
    .venv/bin/python bench/migration.py --app spacegrid.examples.tickets:space --map events --store none --keys 200000

For each throttle value: a fresh LocalGrid of 2 PUs (with its default SQLite store: a new backup loads its
partition from the store, then replays the log's tail) is loaded with `--keys` entries of ~200 bytes; then one client process keeps 32
puts in flight over keys in every partition (closed loop; `--map` of `--app`) while a third PU joins at t = 3 s. It becomes a
backup of its share, catches up (at most catch-ups-max partitions at once), then takes ownership. Latencies are
recorded per call; the table compares p50/p99/max before the join with the migration window (from the join until
the table has 3 members and every partition is active), and how long the migration took. Bounded in time and calls;
loopback only; only the processes this script started are stopped, by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from spacegrid import Client
from spacegrid.inspect import read_status
from spacegrid.launcher import EMBEDDED_STORE, LocalGrid, load_space
from spacegrid.testing.apps import APP
from spacegrid.testing.fixtures import TEST_PU_ARGS

IN_FLIGHT = 32
JOIN_AT_S = 3.0
RUN_MAX_S = 90.0
VALUE = {"payload": "x" * 180}


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def preload(client: Client, map_name: str, keys: int) -> None:
    for start in range(0, keys, 2000):
        await asyncio.gather(*(client.put(map_name, f"k{i}", VALUE) for i in range(start, min(keys, start + 2000))))


async def measure(grid: LocalGrid, map_name: str, keys: int) -> dict[str, Any]:
    samples: list[tuple[float, float]] = []  # (start, latency) in monotonic seconds
    counters = [f"c{p}" for p in range(64)]
    space = grid.space
    async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
        await preload(client, map_name, keys)
        started_s = time.monotonic()
        stop_at_s = started_s + RUN_MAX_S
        window: dict[str, float] = {}

        def running() -> bool:
            now_s = time.monotonic()
            return now_s < stop_at_s and ("end" not in window or now_s < window["end"] + 2.0)

        async def worker(w: int) -> None:
            i = w
            while running():
                key = counters[i % len(counters)]
                i += IN_FLIGHT
                t0 = time.monotonic()
                await client.put(map_name, key, {"n": i})
                samples.append((t0, time.monotonic() - t0))

        async def join() -> None:
            await asyncio.sleep(JOIN_AT_S)
            window["start"] = time.monotonic()
            grid.add_pu()
            while time.monotonic() < stop_at_s:
                status = await read_status(grid.url, space.name, space.partitions, access=grid.access)
                if len(set(status.table.owners)) == 3 and status.active_partitions == space.partitions and all(
                        not info.get("backups_catching_up") and not info.get("backups_waiting")
                        for info in status.members.values()) and len(status.members) == 3:
                    break
                await asyncio.sleep(0.05)
            window["end"] = time.monotonic()

        await asyncio.gather(join(), *(worker(w) for w in range(IN_FLIGHT)))
    before = [lat for t0, lat in samples if t0 < window["start"]]
    during = [lat for t0, lat in samples if window["start"] <= t0 <= window["end"]]
    return {"migration_s": round(window["end"] - window["start"], 3), "calls": len(samples),
            **{f"before_{name}_ms": round(1000 * fn(before), 2) for name, fn in _STATS.items()},
            **{f"during_{name}_ms": round(1000 * fn(during), 2) for name, fn in _STATS.items()}}


_STATS = {"p50": lambda v: statistics.median(v) if v else 0.0, "p99": lambda v: quantile(v, 0.99),
          "max": lambda v: max(v, default=0.0)}


def run(throttle: int, keys: int, app: str, map_name: str, store: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sg-migration-") as tmp:
        grid = LocalGrid(Path(tmp), app, store=store, pu_args=[*TEST_PU_ARGS, "--catch-ups-max", str(throttle)])
        try:
            grid.start(2)
            grid.wait_ready(60, members=2)
            return {"catch_ups_max": throttle, **asyncio.run(measure(grid, map_name, keys))}
        finally:
            grid.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=60_000)
    parser.add_argument("--throttles", default="1,4,64")
    parser.add_argument("--app", default=APP)
    parser.add_argument("--map", dest="map_name", default="kv")
    parser.add_argument("--store", default=EMBEDDED_STORE, help="embedded (SQLite), none, or a URL")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = []
    for throttle in (int(t) for t in args.throttles.split(",")):
        load_space(args.app).map_def(args.map_name)
        result = run(throttle, args.keys, args.app, args.map_name, args.store)
        results.append(result)
        print(f"catch-ups-max {throttle:>3}: migration {result['migration_s']:.2f} s; p50/p99/max before "
              f"{result['before_p50_ms']}/{result['before_p99_ms']}/{result['before_max_ms']} ms, during "
              f"{result['during_p50_ms']}/{result['during_p99_ms']}/{result['during_max_ms']} ms", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
