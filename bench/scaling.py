"""Scale-out under a fixed CPU quota per PU: the ticket workload against grids of 1, 2, 4 and 8 PUs, each PU in its own
cgroup limited to --quota-cores, and PostgreSQL with the same total quota as the control.

    .venv/bin/python bench/scaling.py [--pus 1,2,4,8] [--quota-cores 0.15] [--runs 3] [--json out.json]
    .venv/bin/python bench/scaling.py --quick        # 1,2 PUs, 1 s warm-up + 3 s measured, one run

Each grid is a fresh LocalGrid (store none, embedded nats-server, spacegrid.examples.tickets); every PU is written
into its own cgroup right after it starts (unlimited while the events are loaded, then limited to the quota for the
warm-up and the measured window). The client and nats-server run outside the quotas. The driver is
spacegrid.benchmark's (closed loop, 70% availability, 25% reserve of 1-4 seats, 5% release, the ticket invariant
checked after every run); the offered load grows with the PU count: 64 x N requests in flight (64 at 1 PU, 512
at 8: each PU is offered the same load at every size, as a scale-out test adds clients with members) and events sized for N x the expected per-PU rate.

The control: PostgreSQL (asyncpg, one statement per operation, synchronous_commit off by default so that it is CPU-
bound like the grid), its pool's backends (pg_backend_pid()) in one cgroup with N x the quota. Its throughput per
quota should stay flat, which shows the method, not the grid, sets the curve.

Reported per N: ops/s, efficiency = throughput(N) / (N x throughput(1)), PU CPU us per operation, the share of
enforcement periods in which the PUs ran out of quota (near 1: the quota was the limit), client and nats-server
cores, and the machine's busy cores (if it is near the core count, the machine, not the quota, was the limit).

Only loopback; every loop is bounded; processes are stopped by their PID; the cgroups are removed at the end (also on
failure), and groups left by a killed earlier run are removed at the start.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpuquota import CpuGroups, ThrottleStats, remove_stale

from spacegrid.benchmark.grid_target import GridProcesses, GridTarget
from spacegrid.benchmark.measure import RunSpec, measure
from spacegrid.benchmark.pg_target import PgTarget
from spacegrid.benchmark.workload import ACK_BEFORE_FSYNC, FSYNC_BEFORE_ACK, events_for
from spacegrid.engine.connection import install_uvloop
from spacegrid.launcher import DEFAULT_APP, LocalGrid

PG_DSN_DEFAULT: Final = os.environ.get("SPACEGRID_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
READY_TIMEOUT_S: Final = 120.0
RATE_PER_CORE_GUESS: Final = 50_000.0  # ops/s one PU core is expected to reach at most: sizes the events
INFLIGHT_PER_PU: Final = 64  # the offered load grows with the grid: each PU gets the same load at every size
PUS_MAX: Final = 16
RUNS_MAX: Final = 20
MACHINE_BOUND_SHARE: Final = 0.9  # busy cores above this share of the machine's: the machine was the limit
QUOTA_BOUND_SHARE: Final = 0.5  # the PUs ran out of quota in at least this share of periods: the quota was the limit


class ThrottleHook:
    """cpu.stat of the given groups over the measured window."""

    def __init__(self, groups: dict[str, Any]) -> None:
        self.groups = groups
        self.before: dict[str, ThrottleStats] = {}

    async def start(self) -> None:
        self.before = {name: g.throttling() for name, g in self.groups.items()}

    async def stop(self) -> dict[str, Any]:
        deltas = {name: g.throttling().minus(self.before[name]) for name, g in self.groups.items()}
        periods = sum(d.periods for d in deltas.values())
        throttled = sum(d.throttled for d in deltas.values())
        return {"throttled_share": round(throttled / periods, 3) if periods else None,
                "throttled_s": round(sum(d.throttled_s for d in deltas.values()), 3),
                "per_group": {name: {"periods": d.periods, "throttled": d.throttled} for name, d in deltas.items()}}


class QuotaGridTarget(GridTarget):
    """The grid target; its PUs get their quota once the events are loaded."""

    def __init__(self, grid: GridProcesses, events: int, on_loaded: Callable[[], None]) -> None:
        super().__init__(grid, events)
        self.on_loaded = on_loaded

    async def create_events(self) -> None:
        await super().create_events()
        self.on_loaded()


class QuotaPgTarget(PgTarget):
    """PostgreSQL; the pool's backends go into one cgroup when opened and get its quota once the events are loaded."""

    def __init__(self, dsn: str, events: int, synchronous_commit: bool, pool_size: int, groups: CpuGroups,
                 cores: float) -> None:
        super().__init__(dsn, events, synchronous_commit, pool_size)
        self.cgroups = groups
        self.cores = cores

    async def open(self) -> None:
        await super().open()
        self.group = self.cgroups.group("pg", None)
        for pid in self.backend_pids:
            self.group.add(pid)

    async def create_events(self) -> None:
        await super().create_events()
        self.group.set_quota(self.cores)


def inflight_for(pus: int, fixed: int | None) -> int:
    return fixed if fixed else INFLIGHT_PER_PU * pus


def run_grid(pus: int, args: argparse.Namespace, groups: CpuGroups, progress: Callable[[float, int], None]
             ) -> dict[str, Any]:
    """A fresh grid of `pus` PUs, each in its own cgroup; measured, checked, stopped, its groups removed."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"spacegrid-scaling-{pus}pu-"))
    grid = LocalGrid(data_dir, DEFAULT_APP, store="none", sync_interval=args.sync_interval)
    names = [f"pu{i}" for i in range(pus)]
    try:
        grid.start(pus=0)
        for name in names:
            pu = grid.add_pu()
            groups.group(name, None).add(pu.pid)  # right after start: unlimited until the events are loaded
        grid.wait_ready(timeout_s=READY_TIMEOUT_S, members=pus)
        pids = {f"pu#{pu.index}": pu.pid for pu in grid.pus}
        pids.update({f"nats-server#{i}": node.pid for i, node in enumerate(grid.nats_nodes)})
        durability = FSYNC_BEFORE_ACK if args.sync_interval == "always" else ACK_BEFORE_FSYNC
        processes = GridProcesses(grid.url, pids, durability, f"sync_interval={args.sync_interval}, store=none",
                                  True, pus, grid.client_access)

        def limit() -> None:
            for name in names:
                groups.group(name, args.quota_cores)

        target = QuotaGridTarget(processes, events_for_run(pus, args), limit)
        spec = RunSpec(events_for_run(pus, args), args.warmup_s, args.measure_s, inflight_for(pus, args.inflight))
        hook = ThrottleHook({name: groups.groups[name] for name in names})
        result = asyncio.run(measure(target, spec, progress, lambda _: {"throttle": hook}))
        result["pu_pids_in_groups"] = all(pu.pid in groups.groups[f"pu{i}"].pids() for i, pu in enumerate(grid.pus))
        return result
    finally:
        grid.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        for name in names:
            groups.remove(name)


def run_pg(pus: int, args: argparse.Namespace, groups: CpuGroups, progress: Callable[[float, int], None]
           ) -> dict[str, Any]:
    """PostgreSQL with pus x the quota for its backends."""
    inflight = inflight_for(pus, args.inflight)
    target = QuotaPgTarget(args.pg, events_for_run(pus, args), args.pg_sync_commit == "on",
                           args.pg_pool_per_pu * pus, groups, pus * args.quota_cores)
    spec = RunSpec(events_for_run(pus, args), args.warmup_s, args.measure_s, inflight)
    try:
        return asyncio.run(measure(target, spec, progress, lambda _: {"throttle": ThrottleHook({"pg": groups.groups["pg"]})}))
    finally:
        groups.remove("pg")


def events_for_run(pus: int, args: argparse.Namespace) -> int:
    return events_for(args.warmup_s + args.measure_s, RATE_PER_CORE_GUESS * args.quota_cores * pus)


def summarise(rows: list[dict[str, Any]], pus_list: list[int], machine_cores: int) -> dict[str, Any]:
    """Medians over runs per (target, N); efficiency against the same target's N=1 median."""
    summary: dict[str, Any] = {}
    for target in ("grid", "postgres"):
        per_n: dict[int, Any] = {}
        for n in pus_list:
            done = [r for r in rows if r["target"] == target and r["pus"] == n and "error" not in r["result"]]
            if not done:
                continue
            res = [r["result"] for r in done]
            med = statistics.median
            group = "pu" if target == "grid" else "pg-backend"
            per_n[n] = {
                "runs": len(res),
                "ops_per_s": round(med(r["ops_per_s"] for r in res), 1),
                "ops_per_s_all": [r["ops_per_s"] for r in res],
                "group_us_per_op": round(med(r["cpu_us_per_op"].get(group) or 0 for r in res), 1),
                "total_us_per_op": round(med(r["cpu_us_per_op"].get("total") or 0 for r in res), 1),
                "client_cores": round(med(r["cpu_cores"].get("client", 0) for r in res), 2),
                "nats_cores": round(med(r["cpu_cores"].get("nats-server", 0) for r in res), 2),
                "group_cores": round(med(r["cpu_cores"].get(group, 0) for r in res), 3),
                "machine_busy_cores": round(med(r["cpu_cores"].get("machine_busy", 0) for r in res), 2),
                "throttled_share": _median_or_none([r.get("hooks", {}).get("throttle", {}).get("throttled_share")
                                                    for r in res]),
                "write_p99_ms": _median_or_none([r["latency_ms"]["write"]["p99"] for r in res]),
                "read_p50_ms": _median_or_none([r["latency_ms"]["read"]["p50"] for r in res]),
                "checks_ok": all(r["check"]["ok"] for r in res),
                "errors": sum(sum(r["errors"].values()) for r in res),
            }
            if target == "grid":
                per_n[n]["requests_per_message"] = _median_or_none([_pu_mean(r, "requests_per_message") for r in res])
                per_n[n]["records_per_append"] = _median_or_none([_pu_mean(r, "records_per_append") for r in res])
        base = per_n.get(1, {}).get("ops_per_s")
        for n, entry in per_n.items():
            entry["efficiency"] = round(entry["ops_per_s"] / (n * base), 3) if base else None
            entry["machine_bound"] = entry["machine_busy_cores"] >= MACHINE_BOUND_SHARE * machine_cores
        summary[target] = per_n
    return summary


def _pu_mean(result: dict[str, Any], key: str) -> float | None:
    values = [v[key] for name, v in result.get("target", {}).get("counters", {}).items()
              if name.startswith("pu ") and isinstance(v, dict)]
    return round(statistics.mean(values), 2) if values else None


def _median_or_none(values: list[Any]) -> float | None:
    found = [v for v in values if v is not None]
    return round(statistics.median(found), 3) if found else None


def print_tables(summary: dict[str, Any], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)
    grid = Table(title=f"grid, {args.quota_cores:g} core per PU ({args.sync_interval=!s})", title_justify="left")
    for column in ("PUs", "ops/s", "efficiency", "PU µs/op", "PU quota-throttled", "req/msg", "rec/append",
                   "client cores", "nats cores", "machine busy", "write p99 ms", "checks"):
        grid.add_column(column, justify="right")
    for n, e in sorted(summary.get("grid", {}).items()):
        grid.add_row(str(n), f"{e['ops_per_s']:,.0f}", _fmt(e["efficiency"]), f"{e['group_us_per_op']:.1f}",
                     _fmt(e["throttled_share"]), _fmt(e["requests_per_message"]), _fmt(e["records_per_append"]),
                     f"{e['client_cores']:.2f}", f"{e['nats_cores']:.2f}",
                     f"{e['machine_busy_cores']:.2f}" + (" !" if e["machine_bound"] else ""), _fmt(e["write_p99_ms"]),
                     "ok" if e["checks_ok"] and not e["errors"] else f"FAILED ({e['errors']} errors)")
    console.print(grid)
    pg = Table(title=f"PostgreSQL control, N x {args.quota_cores:g} core for the backends "
                     f"(synchronous_commit={args.pg_sync_commit})", title_justify="left")
    for column in ("N", "quota", "ops/s", "efficiency", "backend µs/op", "quota-throttled", "client cores",
                   "machine busy", "checks"):
        pg.add_column(column, justify="right")
    for n, e in sorted(summary.get("postgres", {}).items()):
        pg.add_row(str(n), f"{n * args.quota_cores:.2f}", f"{e['ops_per_s']:,.0f}", _fmt(e["efficiency"]),
                   f"{e['group_us_per_op']:.1f}", _fmt(e["throttled_share"]), f"{e['client_cores']:.2f}",
                   f"{e['machine_busy_cores']:.2f}" + (" !" if e["machine_bound"] else ""),
                   "ok" if e["checks_ok"] and not e["errors"] else f"FAILED ({e['errors']} errors)")
    if summary.get("postgres"):
        console.print(pg)
    console.print("efficiency = ops/s(N) / (N x ops/s(1)); quota-throttled = share of 100 ms periods in which the "
                  "group used up its quota; '!' = the machine's cores were busy (the machine, not the quota, bound)")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pus", default=None, help="PU counts, comma-separated (default 1,2,4,8; --quick: 1,2)")
    parser.add_argument("--quota-cores", type=float, default=0.15, help="CPU quota of each PU, in cores")
    parser.add_argument("--measure-s", type=float, default=None, help="measured window (default 8; --quick: 3)")
    parser.add_argument("--warmup-s", type=float, default=None, help="warm-up under the quota (default 2; --quick: 1)")
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole sweep; medians are reported")
    parser.add_argument("--inflight", type=int, default=None, help="requests in flight (default 64 x N)")
    parser.add_argument("--targets", default="grid,postgres", help="grid, postgres or both")
    parser.add_argument("--pg", default=PG_DSN_DEFAULT, help="PostgreSQL DSN ($SPACEGRID_BENCH_PG)")
    parser.add_argument("--pg-pool-per-pu", type=int, default=4,
                        help="PostgreSQL connections per N (the pool grows with the quota, like the PUs)")
    parser.add_argument("--pg-sync-commit", choices=("on", "off"), default="off")
    parser.add_argument("--sync-interval", default="1s", help="the embedded nats-server's fsync policy (or 'always')")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="write every run and the summary here")
    args = parser.parse_args(argv)
    args.pus = args.pus or ("1,2" if args.quick else "1,2,4,8")
    args.pus_list = sorted({int(p) for p in args.pus.split(",") if p.strip()})
    args.measure_s = args.measure_s or (3.0 if args.quick else 8.0)
    args.warmup_s = args.warmup_s if args.warmup_s is not None else (1.0 if args.quick else 2.0)
    args.targets_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not args.pus_list or min(args.pus_list) < 1 or max(args.pus_list) > PUS_MAX:
        parser.error(f"--pus takes counts from 1 to {PUS_MAX}")
    if 1 not in args.pus_list:
        parser.error("--pus must include 1 (efficiency is relative to one PU)")
    if not 1 <= args.runs <= RUNS_MAX:
        parser.error(f"--runs takes 1 to {RUNS_MAX}")
    if not 0.01 <= args.quota_cores <= 4:
        parser.error("--quota-cores takes 0.01 to 4")
    if set(args.targets_list) - {"grid", "postgres"}:
        parser.error("--targets takes grid and/or postgres")
    return args


def main(argv: list[str] | None = None) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    args = parse_args(argv)
    install_uvloop()
    stale = remove_stale()
    if stale:
        print(f"removed cgroups left by an earlier run: {', '.join(stale)}", file=sys.stderr)
    machine_cores = os.cpu_count() or 1
    started = {"loadavg": loadavg(), "at": datetime.datetime.now().isoformat(timespec="seconds")}
    plan = [(run, n, t) for run in range(args.runs) for n in args.pus_list for t in args.targets_list]
    rows: list[dict[str, Any]] = []
    with CpuGroups() as groups, Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[ops]}"),
                                         TimeElapsedColumn()) as bar:
        overall = bar.add_task("all runs", total=len(plan), ops="")
        for run, n, target in plan:
            task = bar.add_task(f"run {run + 1}, {target}, N={n}", total=1.0, ops="setting up")

            def progress(share: float, ops: int, task: Any = task) -> None:
                bar.update(task, completed=share, ops=f"{ops:,} ops")

            runner = run_grid if target == "grid" else run_pg
            try:
                result = runner(n, args, groups, progress)
            except Exception as exc:  # noqa: BLE001 - reported; the other runs still run
                result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=12)}
                bar.console.print(f"[red]{target} N={n}: {result['error']}[/red]\n{result['traceback']}", markup=True,
                                  highlight=False)
            rows.append({"run": run, "pus": n, "target": target, "result": result})
            bar.update(task, completed=1.0, ops=_short(result))
            bar.advance(overall)
    finished = {"loadavg": loadavg(), "at": datetime.datetime.now().isoformat(timespec="seconds")}
    summary = summarise(rows, args.pus_list, machine_cores)
    print_tables(summary, args)
    print(f"loadavg before: {started['loadavg']}; after: {finished['loadavg']}; {machine_cores} cores")
    if args.json is not None:
        report = {"settings": {k: v for k, v in vars(args).items() if k not in ("json",)},
                  "machine": {"cores": machine_cores, "before": started, "after": finished,
                              "commit": _commit()},
                  "summary": summary, "runs": rows}
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    failed = [r for r in rows if "error" in r["result"] or not r["result"]["check"]["ok"]]
    return 1 if failed else 0


def _short(result: dict[str, Any]) -> str:
    if "error" in result:
        return "error"
    return f"{result['ops_per_s']:,.0f} ops/s, check {'ok' if result['check']['ok'] else 'FAILED'}"


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, check=False,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


if __name__ == "__main__":
    sys.exit(main())
