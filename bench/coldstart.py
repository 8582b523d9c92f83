"""Cold start over a PostgreSQL store: a new grid (its own empty nats-server, then 1, 2 or 4 PUs) over a store that
already holds N entries; the time from the launcher's start until every partition serves, process start included.

    .venv/bin/python bench/coldstart.py --quick                                # 100,000 entries, 1 PU, one run
    .venv/bin/python bench/coldstart.py --entries 1000000,5000000 --pus 1,2,4 --runs 3 [--json out.json]

The store is filled once per size with COPY straight into the store's own tables (bench/storefill.py: the ticket app's
`events` map, values of about 100 B msgpack, each partition's progress row saying the store holds them), in a schema
of its own, dropped at the end. Each run starts a fresh LocalGrid over it (an empty NATS: LocalGrid.start writes the
grid's configuration) and waits with wait_ready (every partition active on its owner, polled every 0.1 s); with 2 or
more PUs it also waits for every partition's hot backup. rows/min = entries / time to serve. Afterwards the entries
in memory are counted (the members' statistics) and a sample of keys is read back and compared.

Only loopback; every wait is bounded; processes are stopped by their PID.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import statistics
import sys
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

from storefill import MAP, FilledStore, grid_over, key_of, member_pids, rss_bytes, value_of  # noqa: I001

from spacegrid.security.access import Access
from spacegrid.client.client import Client
from spacegrid.examples.tickets import space as tickets_space

PG_DSN_DEFAULT: Final = os.environ.get("SPACEGRID_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
SAMPLE_KEYS: Final = 200
RUNS_MAX: Final = 20


async def read_back(url: str, access: Access, entries: int, seed: int) -> int:
    """Keys of a random sample whose value differs from what was filled (0: all equal)."""
    rng = random.Random(seed)
    sample = [rng.randrange(entries) for _ in range(min(SAMPLE_KEYS, entries))]
    async with await Client.connect(tickets_space, url, access=access) as client:
        found = await client.get_many(MAP, [key_of(i) for i in sample])
    return sum(1 for i in sample if found.get(key_of(i)) != value_of(i))


def one_run(store_url: str, entries: int, pus: int, seed: int) -> dict[str, Any]:
    with grid_over(store_url, pus) as started:
        members = started.status.members.values()
        in_memory = sum(int(info.get("maps", {}).get(MAP, {}).get("entries", 0)) for info in members)
        loaded = sum(int(info.get("loaded_rows", 0)) for info in members)
        wrong = asyncio.run(read_back(started.grid.url, started.grid.client_access, entries, seed)) if entries else 0
        rss = {member: rss_bytes(pid) for member, pid in member_pids(started.status).items()}
        return {"ready_s": round(started.ready_s, 3),
                "backups_ready_s": None if started.backups_ready_s is None else round(started.backups_ready_s, 3),
                "rows_per_min": round(entries / started.ready_s * 60) if entries else None,
                "entries_in_memory": in_memory, "loaded_rows": loaded, "sample_wrong": wrong,
                "ok": in_memory == entries and wrong == 0, "rss_bytes": rss}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for entries, pus in dict.fromkeys((r["entries"], r["pus"]) for r in rows):
        done = [r["result"] for r in rows if r["entries"] == entries and r["pus"] == pus and "error" not in r["result"]]
        if not done:
            out.append({"entries": entries, "pus": pus, "runs": 0})
            continue
        ready = [r["ready_s"] for r in done]
        backups = [r["backups_ready_s"] for r in done if r["backups_ready_s"] is not None]
        out.append({"entries": entries, "pus": pus, "runs": len(done), "ready_s_median": round(statistics.median(ready), 3),
                    "ready_s_min": min(ready), "ready_s_max": max(ready),
                    "backups_ready_s_median": round(statistics.median(backups), 3) if backups else None,
                    "rows_per_min_median": round(entries / statistics.median(ready) * 60) if entries else None,
                    "ok": all(r["ok"] for r in done)})
    return out


def print_table(summary: list[dict[str, Any]], fills: dict[int, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="cold start over PostgreSQL (new grid, empty NATS)", title_justify="left")
    for column in ("entries", "PUs", "runs", "serving: median s", "min-max s", "rows/min (median)",
                   "hot backups ready s", "check"):
        table.add_column(column, justify="right")
    for e in summary:
        if not e["runs"]:
            table.add_row(f"{e['entries']:,}", str(e["pus"]), "0", "-", "-", "-", "-", "FAILED")
            continue
        table.add_row(f"{e['entries']:,}", str(e["pus"]), str(e["runs"]), f"{e['ready_s_median']:.2f}",
                      f"{e['ready_s_min']:.2f}-{e['ready_s_max']:.2f}",
                      f"{e['rows_per_min_median'] / 1e6:.1f}M" if e["rows_per_min_median"] else "-",
                      "-" if e["backups_ready_s_median"] is None else f"{e['backups_ready_s_median']:.2f}",
                      "ok" if e["ok"] else "FAILED")
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    console.print("store filled by COPY: " + ", ".join(f"{n:,} rows in {s:.1f} s" for n, s in fills.items()))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", default=None, help="store sizes, comma-separated (default 300000; --quick: "
                        "100000); 1000000,5000000 for the issue's sizes")
    parser.add_argument("--pus", default=None, help="PU counts, comma-separated (default 1,2,4; --quick: 1)")
    parser.add_argument("--runs", type=int, default=None, help="cold starts per size and PU count (default 3; "
                        "--quick: 1)")
    parser.add_argument("--pg", default=PG_DSN_DEFAULT, help="PostgreSQL DSN ($SPACEGRID_BENCH_PG)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.entries_list = [int(float(v)) for v in (args.entries or ("100000" if args.quick else "300000")).split(",")]
    args.pus_list = [int(v) for v in (args.pus or ("1" if args.quick else "1,2,4")).split(",")]
    args.runs = args.runs or (1 if args.quick else 3)
    if not 1 <= args.runs <= RUNS_MAX or min(args.pus_list) < 1 or max(args.pus_list) > 16:
        parser.error(f"--runs takes 1 to {RUNS_MAX}, --pus 1 to 16")
    return args


def main(argv: list[str] | None = None) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    args = parse_args(argv)
    before = Path("/proc/loadavg").read_text().strip()
    rows: list[dict[str, Any]] = []
    fills: dict[int, float] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[note]}"),
                  TimeElapsedColumn()) as bar:
        total = len(args.entries_list) * (1 + len(args.pus_list) * args.runs)
        task = bar.add_task("cold starts", total=total, note="")
        for entries in args.entries_list:
            bar.update(task, note=f"filling the store with {entries:,} entries")
            store = FilledStore(args.pg, entries)
            asyncio.run(store.__aenter__())
            try:
                fills[entries] = round(store.fill_s, 1)
                bar.advance(task)
                for pus in args.pus_list:
                    for run in range(args.runs):
                        bar.update(task, note=f"{entries:,} entries, {pus} PU, run {run + 1}")
                        try:
                            result = one_run(store.url, entries, pus, seed=run)
                        except Exception as exc:  # noqa: BLE001 - reported; the other runs go on
                            result = {"error": f"{type(exc).__name__}: {exc}"}
                            bar.console.print(f"{entries:,} x {pus} PU: {result['error']}", markup=False)
                        rows.append({"entries": entries, "pus": pus, "run": run, "result": result})
                        bar.advance(task)
            finally:
                asyncio.run(store.drop())
    summary = summarise(rows)
    print_table(summary, fills)
    after = Path("/proc/loadavg").read_text().strip()
    print(f"loadavg before: {before}; after: {after}; {os.cpu_count()} cores")
    if args.json is not None:
        args.json.write_text(json.dumps({"settings": {"entries": args.entries_list, "pus": args.pus_list,
                                                      "runs": args.runs},
                                         "machine": {"before": before, "after": after, "cores": os.cpu_count(),
                                                     "at": datetime.datetime.now().isoformat(timespec="seconds")},
                                         "fill_s": fills, "summary": summary, "runs": rows}, indent=2) + "\n")
    return 0 if all("error" not in r["result"] and r["result"]["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
