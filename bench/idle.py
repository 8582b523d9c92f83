"""What an idle grid costs per PU: the CPU each PU and nats-server spend with no client, for grids of 1, 2, 4 and 8 PUs.

    .venv/bin/python bench/idle.py [--pus 1,2,4,8] [--settle-s 5] [--measure-s 20] [--json out.json]

A PU's fixed costs (heartbeats and lease renewals, the members watch, coordination rounds, probes, timers) are paid
whatever the load; under a CPU quota they come out of the work a PU can do, and the ones that grow with the number of
PUs bend the scale-out curve (bench/scaling.py). Each grid is a fresh LocalGrid (store none, the ticket app, secure as
`spacegrid up`), ready with every hot backup caught up, then left alone for --settle-s before the window; the CPU
(utime + stime from /proc) of every PU and of nats-server is read at both ends of the window. The coordinator (the
live member with the smallest id) does more than the others and is shown apart.

Only loopback; processes are stopped by their PID; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from spacegrid.benchmark.cpu import proc_cpu_split_s
from spacegrid.launcher import DEFAULT_APP, LocalGrid

READY_TIMEOUT_S: Final = 120.0
BACKUPS_READY_TIMEOUT_S: Final = 60.0
PUS_MAX: Final = 16
POLL_S: Final = 0.25


def cpu_s(pid: int) -> float:
    split = proc_cpu_split_s(pid)
    if split is None:
        raise RuntimeError(f"process {pid} is gone")
    return split[0] + split[1]


def wait_backups_ready(grid: LocalGrid, pus: int) -> None:
    """Until every partition has a ready hot backup (with 2 PUs or more): catching up costs CPU the window must not
    count."""
    if pus < 2:
        return
    deadline_s = time.monotonic() + BACKUPS_READY_TIMEOUT_S
    while time.monotonic() < deadline_s:
        status = grid.status()
        ready = sum(len(info.get("ready_backups", [])) for info in status.members.values())
        if ready >= status.table.partition_count:
            return
        time.sleep(POLL_S)
    raise RuntimeError(f"the hot backups of {pus} PUs were not ready within {BACKUPS_READY_TIMEOUT_S:g} s")


def measure_idle(pus: int, settle_s: float, measure_s: float) -> dict[str, Any]:
    """A fresh grid of `pus` PUs, idle: CPU ms per second of each PU (by member id) and of nats-server."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"spacegrid-idle-{pus}pu-"))
    grid = LocalGrid(data_dir, DEFAULT_APP, store="none")
    try:
        grid.start(pus=pus)
        status = grid.wait_ready(timeout_s=READY_TIMEOUT_S, members=pus)
        wait_backups_ready(grid, pus)
        time.sleep(settle_s)  # a fixed window of an idle grid is the measurement itself
        members = {int(info["pid"]): member for member, info in grid.status().members.items()}
        pids = {members.get(pu.pid, f"pu#{pu.index}"): pu.pid for pu in grid.pus}
        nats_pids = [node.pid for node in grid.nats_nodes]
        before = {name: cpu_s(pid) for name, pid in pids.items()}
        nats_before = sum(cpu_s(pid) for pid in nats_pids)
        started_s = time.monotonic()
        time.sleep(measure_s)  # the window
        elapsed_s = time.monotonic() - started_s
        per_pu = {name: 1000 * (cpu_s(pid) - before[name]) / elapsed_s for name, pid in pids.items()}
        nats_ms = 1000 * (sum(cpu_s(pid) for pid in nats_pids) - nats_before) / elapsed_s
        coordinator = min(per_pu)  # member ids: the smallest live one coordinates
        others = [v for k, v in per_pu.items() if k != coordinator]
        return {"pus": pus, "partitions": status.table.partition_count, "window_s": round(elapsed_s, 2),
                "pu_ms_per_s": {k: round(v, 2) for k, v in per_pu.items()},
                "coordinator_ms_per_s": round(per_pu[coordinator], 2),
                "other_pu_ms_per_s_median": round(statistics.median(others), 2) if others else None,
                "nats_ms_per_s": round(nats_ms, 2)}
    finally:
        grid.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pus", default="1,2,4,8", help="PU counts, comma-separated")
    parser.add_argument("--settle-s", type=float, default=5.0, help="idle time before the window")
    parser.add_argument("--measure-s", type=float, default=20.0, help="the measured window")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    counts = [int(n) for n in args.pus.split(",")]
    if not all(1 <= n <= PUS_MAX for n in counts):
        sys.exit(f"--pus: each count between 1 and {PUS_MAX}, not {args.pus}")
    rows = []
    with Progress() as progress:
        task = progress.add_task("idle grids", total=len(counts))
        for n in counts:
            progress.update(task, description=f"{n} PU(s), {args.settle_s + args.measure_s:g} s idle")
            rows.append(measure_idle(n, args.settle_s, args.measure_s))
            progress.advance(task)
    table = Table(title=f"An idle grid: CPU per second ({args.measure_s:g} s window)")
    for column in ("PUs", "coordinator ms/s", "other PUs ms/s (median)", "nats-server ms/s", "all PUs ms/s"):
        table.add_column(column, justify="right")
    for row in rows:
        other = row["other_pu_ms_per_s_median"]
        table.add_row(str(row["pus"]), f"{row['coordinator_ms_per_s']:.1f}", "-" if other is None else f"{other:.1f}",
                      f"{row['nats_ms_per_s']:.1f}", f"{sum(row['pu_ms_per_s'].values()):.1f}")
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
