"""Time to recovery after SIGKILL of a PU under a steady write load, with the default heartbeat settings.

    .venv/bin/python bench/failover.py [--runs 5] [--pus 3] [--json out.json]

Each run: a writer (32 concurrent increments, keys over every partition) runs against the grid; one PU is SIGKILLed;
recovery time = from the kill until every partition the victim owned has acknowledged a write again. A new PU then
replaces the victim and the grid is given time to settle. Afterwards the counters are checked against the
acknowledged increments (exact: every write carries an operation id). Loopback only, bounded in time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from spacegrid.client.client import Client
from spacegrid.engine.connection import install_uvloop
from spacegrid.inspect import read_status
from spacegrid.launcher import LocalGrid

APP = "spacegrid.testing.apps:space"
WORKERS = 32
KEYS_PER_PARTITION = 4
RUN_TIME_MAX_S = 30.0


async def one_run(grid: LocalGrid, client: Client, run: int, acked: dict[str, int]) -> dict[str, Any]:
    status = await read_status(grid.url, grid.space.name, grid.space.partitions, access=grid.access)
    victim = grid.pus[run % len(grid.pus)]
    victim_id = next(member for member, info in status.members.items() if info.get("pid") == victim.pid)
    affected = set(status.table.owned_by(victim_id))
    keys = [next(f"k{p}-{j}-{i}" for i in range(100_000) if grid.space.partition_of("counters", f"k{p}-{j}-{i}") == p)
            for p in range(grid.space.partitions) for j in range(KEYS_PER_PARTITION)]
    recovered: dict[int, float] = {}
    killed_at = 0.0
    slowest_s = 0.0
    stop_at = time.monotonic() + RUN_TIME_MAX_S

    async def worker(w: int) -> None:
        nonlocal slowest_s
        i = w
        while time.monotonic() < stop_at and not (killed_at and len(recovered) == len(affected)):
            key = keys[i % len(keys)]
            i += WORKERS
            started = time.monotonic()
            await client.execute("incr", key)
            done = time.monotonic()
            acked[key] = acked.get(key, 0) + 1
            slowest_s = max(slowest_s, done - started)
            partition = grid.space.partition_of("counters", key)
            if killed_at and started > killed_at and partition in affected and partition not in recovered:
                recovered[partition] = done - killed_at

    async def killer() -> None:
        nonlocal killed_at
        await asyncio.sleep(1.0)
        victim.kill()
        killed_at = time.monotonic()

    await asyncio.gather(killer(), *(worker(w) for w in range(WORKERS)))
    assert len(recovered) == len(affected), f"run {run}: {len(affected) - len(recovered)} partitions never recovered"
    grid.pus.remove(victim)
    grid.add_pu()
    await asyncio.to_thread(grid.wait_ready, 60.0, None, len(grid.pus))
    return {"run": run, "victim_partitions": len(affected), "recovery_s": max(recovered.values()),
            "first_partition_s": min(recovered.values()), "slowest_call_s": slowest_s}


async def main_async(args: argparse.Namespace, grid: LocalGrid) -> dict[str, Any]:
    acked: dict[str, int] = {}
    results = []
    async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
        for run in range(args.runs):
            results.append(await one_run(grid, client, run, acked))
            Console(stderr=True).print(f"run {run}: recovered in {results[-1]['recovery_s']:.3f}s")
        values = await asyncio.gather(*(client.get("counters", key) for key in acked))
    mismatches = [key for key, value in zip(acked, values) if value != acked[key]]
    recovery = [r["recovery_s"] for r in results]
    return {"runs": results, "recovery_s_p50": statistics.median(recovery), "recovery_s_max": max(recovery),
            "counter_mismatches": len(mismatches), "pus": args.pus}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pus", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    install_uvloop()
    with tempfile.TemporaryDirectory(prefix="sg-failover-") as tmp:
        grid = LocalGrid(Path(tmp), APP)
        try:
            grid.start(args.pus)
            grid.wait_ready(60, members=args.pus)
            report = asyncio.run(main_async(args, grid))
        finally:
            grid.stop()
    table = Table(title=f"SIGKILL of one of {args.pus} PUs under load (defaults: heartbeat 0.2 s, lease 0.6 s, timeout 1.5 s)")
    for column in ("run", "partitions lost", "all resumed (s)", "first resumed (s)", "slowest call (s)"):
        table.add_column(column, justify="right")
    for r in report["runs"]:
        table.add_row(str(r["run"]), str(r["victim_partitions"]), f"{r['recovery_s']:.3f}",
                      f"{r['first_partition_s']:.3f}", f"{r['slowest_call_s']:.3f}")
    Console().print(table)
    Console().print(f"recovery p50 {report['recovery_s_p50']:.3f}s, max {report['recovery_s_max']:.3f}s; "
                    f"counter mismatches: {report['counter_mismatches']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
