"""Memory per entry: the PUs' RSS growth per entry held, against a plain Python dict of the same entries in one process.

    .venv/bin/python bench/memory.py --quick                               # 200,000 entries, 1 PU
    .venv/bin/python bench/memory.py --entries 1000000,5000000 --pus 1,2,4 [--json out.json]

The grid: a new grid over a PostgreSQL store pre-filled with N entries of the ticket app's `events` map (values of
about 100 B msgpack; bench/storefill.py), started like bench/coldstart.py, once every partition serves and (2 PUs or
more) every hot backup is ready, and the RSS has settled. Its growth: the sum of the PUs' VmRSS (/proc/PID/status)
minus the same sum for a grid of as many PUs over an empty store. With 2 or more PUs each entry is held twice (owner
and one hot backup, the space's backup_count): the growth is reported per entry and per copy held.

The plain dict: a fresh Python process (the same interpreter) that builds {key: value} for the same keys, once with
the values decoded (a dict per entry: what an application would keep) and once as the encoded msgpack bytes (what a
PU keeps); its VmRSS after minus before. Ratio = the grid's bytes per copy / the plain dict's bytes per entry.

Only loopback; every wait is bounded; processes are stopped by their PID.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

from storefill import FilledStore, grid_over, member_pids, rss_bytes

PG_DSN_DEFAULT: Final = os.environ.get("SPACEGRID_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
SETTLE_POLL_S: Final = 0.5
SETTLE_TOLERANCE: Final = 0.005  # RSS sum changed less than this share between two polls: settled
SETTLE_MAX_S: Final = 30.0
PLAIN_TIMEOUT_S: Final = 600.0
PLAIN_KINDS: Final = ("decoded", "encoded")

PLAIN_DICT = """
import json, sys
sys.path.insert(0, {bench!r})
from storefill import key_of, value_of, rss_bytes
from spacegrid import codec
import os, gc
entries, kind = {entries}, {kind!r}
before = rss_bytes(os.getpid())
if kind == "decoded":
    held = {{key_of(i): value_of(i) for i in range(entries)}}
else:
    encode = codec.encode
    held = {{key_of(i): encode(value_of(i)) for i in range(entries)}}
gc.collect()
after = rss_bytes(os.getpid())
print(json.dumps({{"entries": len(held), "growth_bytes": after - before}}))
"""


def settled_rss(pids: dict[str, int]) -> dict[str, int]:
    """Each PU's VmRSS once their sum stopped changing (bounded by SETTLE_MAX_S)."""
    deadline = time.monotonic() + SETTLE_MAX_S
    last = {member: rss_bytes(pid) for member, pid in pids.items()}
    while time.monotonic() < deadline:
        time.sleep(SETTLE_POLL_S)  # sampling memory over time: the PUs' own activity is what settles
        now = {member: rss_bytes(pid) for member, pid in pids.items()}
        if abs(sum(now.values()) - sum(last.values())) <= SETTLE_TOLERANCE * sum(last.values()):
            return now
        last = now
    return last


def grid_rss(store_url: str, pus: int) -> dict[str, Any]:
    with grid_over(store_url, pus) as started:
        pids = member_pids(started.status)
        rss = settled_rss(pids)
        entries = sum(int(info.get("entries", 0)) for info in started.status.members.values())
        return {"rss_bytes": rss, "rss_sum_bytes": sum(rss.values()), "ready_s": round(started.ready_s, 3),
                "entries_reported": entries}


def plain_dict(entries: int, kind: str) -> dict[str, Any]:
    code = PLAIN_DICT.format(bench=str(Path(__file__).resolve().parent), entries=entries, kind=kind)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=PLAIN_TIMEOUT_S,
                          check=True)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    found["bytes_per_entry"] = round(found["growth_bytes"] / entries, 1)
    return found


def measure_size(pg: str, entries: int, pus_list: list[int], baselines: dict[int, int],
                 note: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"entries": entries, "plain": {}, "grid": {}}
    for kind in PLAIN_KINDS:
        note(f"{entries:,}: plain dict ({kind})")
        out["plain"][kind] = plain_dict(entries, kind)
    store = FilledStore(pg, entries)
    note(f"{entries:,}: filling the store")
    asyncio.run(store.__aenter__())
    try:
        out["fill_s"] = round(store.fill_s, 1)
        out["value_bytes"] = store.value_bytes_mean
        for pus in pus_list:
            note(f"{entries:,}: grid of {pus} PU")
            loaded = grid_rss(store.url, pus)
            copies = 1 + min(1, pus - 1)  # the ticket space's backup_count is 1
            growth = loaded["rss_sum_bytes"] - baselines[pus]
            per_copy = growth / (entries * copies)
            out["grid"][pus] = {**loaded, "baseline_rss_sum_bytes": baselines[pus], "copies": copies,
                                "growth_bytes": growth, "bytes_per_entry": round(growth / entries, 1),
                                "bytes_per_entry_copy": round(per_copy, 1),
                                "ratio_to_decoded_dict": round(per_copy / out["plain"]["decoded"]["bytes_per_entry"], 2),
                                "ratio_to_encoded_dict": round(per_copy / out["plain"]["encoded"]["bytes_per_entry"], 2)}
    finally:
        asyncio.run(store.drop())
    return out


def baseline_rss(pg: str, pus_list: list[int], note: Any) -> dict[int, int]:
    """The PUs' RSS sum over an empty store, per PU count."""
    store = FilledStore(pg, 0)
    asyncio.run(store.__aenter__())
    try:
        found = {}
        for pus in pus_list:
            note(f"baseline: empty grid of {pus} PU")
            found[pus] = grid_rss(store.url, pus)["rss_sum_bytes"]
        return found
    finally:
        asyncio.run(store.drop())


def print_table(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="memory per entry (RSS growth; values of about 100 B)", title_justify="left")
    columns = ("entries", "PUs", "copies", "grid RSS growth", "B/entry", "B/entry/copy",
               "plain dict B/entry (decoded / bytes)", "ratio (decoded / bytes)", "in memory")
    for column in columns:
        table.add_column(column, justify="right")
    for size in results:
        plain = size["plain"]
        for pus, g in sorted(size["grid"].items()):
            table.add_row(f"{size['entries']:,}", str(pus), str(g["copies"]), f"{g['growth_bytes'] / 2**20:,.0f} MiB",
                          f"{g['bytes_per_entry']:.0f}", f"{g['bytes_per_entry_copy']:.0f}",
                          f"{plain['decoded']['bytes_per_entry']:.0f} / {plain['encoded']['bytes_per_entry']:.0f}",
                          f"{g['ratio_to_decoded_dict']:.2f} / {g['ratio_to_encoded_dict']:.2f}",
                          f"{g['entries_reported']:,}")
    Console(width=None if sys.stdout.isatty() else 170).print(table)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", default=None, help="sizes, comma-separated (default 1000000; --quick: 200000); "
                        "1000000,5000000 for the issue's sizes")
    parser.add_argument("--pus", default=None, help="PU counts (default 1,2,4; --quick: 1)")
    parser.add_argument("--pg", default=PG_DSN_DEFAULT, help="PostgreSQL DSN ($SPACEGRID_BENCH_PG)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.entries_list = [int(float(v)) for v in (args.entries or ("200000" if args.quick else "1000000")).split(",")]
    args.pus_list = [int(v) for v in (args.pus or ("1" if args.quick else "1,2,4")).split(",")]
    if min(args.entries_list) < 1000 or max(args.pus_list) > 16 or min(args.pus_list) < 1:
        parser.error("--entries from 1000, --pus 1 to 16")
    return args


def main(argv: list[str] | None = None) -> int:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    args = parse_args(argv)
    before = Path("/proc/loadavg").read_text().strip()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()) as bar:
        task = bar.add_task("starting")

        def note(text: str) -> None:
            bar.update(task, description=text)

        baselines = baseline_rss(args.pg, args.pus_list, note)
        results = [measure_size(args.pg, entries, args.pus_list, baselines, note) for entries in args.entries_list]
    print_table(results)
    after = Path("/proc/loadavg").read_text().strip()
    print("empty-grid RSS sums: " + ", ".join(f"{p} PU {b / 2**20:.0f} MiB" for p, b in baselines.items()))
    print(f"loadavg before: {before}; after: {after}")
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": {"before": before, "after": after, "cores": os.cpu_count(),
                                                     "at": datetime.datetime.now().isoformat(timespec="seconds")},
                                         "baselines": baselines, "results": results}, indent=2) + "\n")
    return 0 if all(g["entries_reported"] >= r["entries"] for r in results for g in r["grid"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
