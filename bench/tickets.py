"""The ticket-sale benchmark with the bench-only extras, over spacegrid.benchmark (what `spacegrid bench` runs).

    .venv/bin/python bench/tickets.py [--quick] [--json out.json] [--targets echo,grid1,grid2,postgres]

The workload, the targets, the CPU accounting, the invariant check and the report are the package's
(docs/benchmarks.md). Added here: the `echo` target (spacegrid's client against bench/echo_responder.py, the ceiling
of the client/NATS path), `grid1-read`/`grid2-read` (availability by a plain get), the driver's own CPU per
operation (a no-op target), --profile (py-spy) and --gc-probe (bench/probes.py), and re-running a target while
other load disturbed it (--retries). Loopback only; only processes this script started are stopped, by their PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from probes import GcProbe, PySpy, python_pids, summarize_profile
from rich.console import Console

from spacegrid.benchmark import report
from spacegrid.benchmark.cpu import wait_quiet
from spacegrid.benchmark.grid_target import GridProcesses, GridTarget
from spacegrid.benchmark.measure import RunSpec, measure
from spacegrid.benchmark.pg_target import POOL_IMPLS
from spacegrid.benchmark.runner import (
    BASELINE,
    GRID_TARGETS,
    PG_ENV,
    REDIS_ENV,
    Sources,
    TargetFactory,
    choose_targets,
    factory,
    on_started_grid,
    run_one,
)
from spacegrid.benchmark.workload import (
    CONCURRENCY_DEFAULT,
    RATE_GUESS_OPS_S,
    events_for,
)
from spacegrid.engine.connection import connect, install_uvloop
from spacegrid.engine.coordination import Coordination
from spacegrid.engine.server import NatsServerProcess, NatsServerSpec
from spacegrid.engine.subjects import Names
from spacegrid.examples.tickets import space as tickets_space
from spacegrid.partitioning import PartitionTable
from spacegrid.security.access import Access

BENCH_DIR = Path(__file__).resolve().parent
ALIASES = {"postgres": "pg-on"}
BENCH_ONLY = ("echo", "grid1-read", "grid2-read")
ECHO_MEMBER = "echo"
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_DEFAULT = "redis://127.0.0.1:6379"
RESPONDER_STOP_S = 10.0
DRIVER_PROBE_S = 1.0


class EchoTarget(GridTarget):
    """The same client calls, answered at once by bench/echo_responder.py: no state, nothing to check."""

    checked = False

    async def create_events(self) -> None:
        return None

    async def reserve(self, event: int, seats: tuple[int, ...], holder: str) -> bool:
        await self.client.execute("reserve", self.event_keys[event],
                                  {"seats": [self.seat_names[s] for s in seats], "holder": holder})
        return True

    async def release(self, event: int, seats: tuple[int, ...], holder: str) -> int:
        await self.client.execute("release", self.event_keys[event],
                                  {"seats": [self.seat_names[s] for s in seats], "holder": holder})
        return len(seats)

    async def window_mark(self, phase: str) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"system": "NATS echo: spacegrid's client, a responder with no state and no log",
                "durability": "none (no state)", "setting": "embedded nats-server"}


class NullTarget(EchoTarget):
    """Answers at once without I/O: the driver's own CPU per operation."""

    def __init__(self) -> None:
        pass

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def availability(self, event: int) -> None:
        await asyncio.sleep(0)

    async def reserve(self, event: int, seats: tuple[int, ...], holder: str) -> bool:
        await asyncio.sleep(0)
        return True

    async def release(self, event: int, seats: tuple[int, ...], holder: str) -> int:
        await asyncio.sleep(0)
        return len(seats)

    def pids(self) -> dict[str, int]:
        return {}


async def publish_echo_table(url: str) -> None:
    """A partition table that gives every partition to the echo responder, so that spacegrid's Client (unchanged)
    routes and batches to it exactly as it would to one PU."""
    nc = await connect(url, "bench-echo-table")
    try:
        coordination = await Coordination.open(nc.jetstream(), Names(tickets_space.name), create=True)
        partitions = tickets_space.partitions
        if await coordination.write_table(PartitionTable(1, (ECHO_MEMBER,) * partitions, (1,) * partitions), 0) is None:
            raise SystemExit("the echo server already had a partition table")
    finally:
        await nc.close()


@contextmanager
def echo_target(spec: RunSpec) -> Iterator[EchoTarget]:
    """An embedded nats-server and the echo responder, both stopped (by PID) afterwards."""
    data_dir = Path(tempfile.mkdtemp(prefix="spacegrid-bench-echo-"))
    server = NatsServerProcess(NatsServerSpec(store_dir=data_dir / "nats"))
    responder: subprocess.Popen[bytes] | None = None
    try:
        server.start()
        subject = f"sg.{tickets_space.name}.pu.{ECHO_MEMBER}"
        responder = subprocess.Popen([sys.executable, str(BENCH_DIR / "echo_responder.py"), server.url, subject],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        assert responder.stdout is not None
        if responder.stdout.readline().strip() != b"ready":  # "ready", or EOF if it died
            raise SystemExit(f"echo responder did not start (exit {responder.poll()})")
        asyncio.run(publish_echo_table(server.url))
        pids = {"nats-server": server.pid, "echo": responder.pid}
        yield EchoTarget(GridProcesses(server.url, pids, "none", "", True, 1, Access()), spec.events)
    finally:
        if responder is not None and responder.poll() is None:
            os.kill(responder.pid, signal.SIGTERM)
            try:
                responder.wait(timeout=RESPONDER_STOP_S)
            except subprocess.TimeoutExpired:
                os.kill(responder.pid, signal.SIGKILL)
                responder.wait()
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def target_factory(name: str, sources: Sources, spec: RunSpec) -> TargetFactory:
    if name == "echo":
        return lambda: echo_target(spec)
    if name in ("grid1-read", "grid2-read"):
        return lambda: on_started_grid(int(name[4]), sources.sync_interval, sources, spec, availability_by_get=True)
    return factory(name, sources, spec)


def hooks_for(args: argparse.Namespace, name: str, spec: RunSpec) -> Any:
    if not args.profile and not args.gc_probe:
        return None

    def hooks(target: Any) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if args.profile:
            found["profile"] = PySpy(args.profile, name, python_pids(target.pids()), spec.measure_s)
        if args.gc_probe:
            found["gc"] = GcProbe(args.gc_probe, {k: v for k, v in target.pids().items() if k.startswith("pu")})
        return found

    return hooks


def run_with_retries(name: str, make: TargetFactory, spec: RunSpec, args: argparse.Namespace) -> dict[str, Any]:
    """Run it again (at most --retries times) while other processes used more than --interference-max cores
    during its window; keep the least disturbed attempt."""
    attempts: list[dict[str, Any]] = []
    for attempt in range(1 + max(0, args.retries)):
        print(f"running {name} ..." + (f" (attempt {attempt + 1})" if attempt else ""), file=sys.stderr, flush=True)
        background = wait_quiet(args.quiet_wait_s)
        result = run_one(name, make, spec, hooks=hooks_for(args, name, spec))
        result["background_busy_cores_before"] = background
        result["interference"] = result.get("cpu_cores", {}).get("unattributed", 0.0)
        attempts.append(result)
        print(f"  {result.get('ops_per_s', 0):,.0f} ops/s, check {'ok' if result['check']['ok'] else 'FAILED'}; "
              f"{result['interference']:.2f} cores busy outside the measured processes", file=sys.stderr, flush=True)
        if "error" in result or result["interference"] <= args.interference_max:
            break
    best = min(attempts, key=lambda a: a["interference"])
    best["attempts"] = [{"ops_per_s": a.get("ops_per_s"), "interference": a["interference"],
                         "check_ok": a["check"]["ok"]} for a in attempts]
    best["check"]["ok"] = all(a["check"]["ok"] for a in attempts)
    return best


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 s warm-up + 3 s measured per target")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--events", type=int, default=None, help="events of 100 seats (default: sized by --rate-guess)")
    parser.add_argument("--rate-guess", type=float, default=RATE_GUESS_OPS_S, help="ops/s used to size --events")
    parser.add_argument("--targets", default="echo,grid1,grid2,postgres",
                        help=f"comma-separated: echo, {', '.join(GRID_TARGETS)}, grid1-read, grid2-read, postgres "
                             f"(= pg-on), pg-off, redis-always, redis-everysec")
    parser.add_argument("--pg", default=os.environ.get(PG_ENV, PG_DEFAULT), help="PostgreSQL URL")
    parser.add_argument("--redis", default=os.environ.get(REDIS_ENV, REDIS_DEFAULT), help="Redis URL")
    parser.add_argument("--pg-pool", type=int, default=CONCURRENCY_DEFAULT, help="PostgreSQL connections")
    parser.add_argument("--pg-pool-impl", choices=POOL_IMPLS, default="list",
                        help="list: N open connections taken and given back in Python (default); asyncpg: asyncpg.Pool")
    parser.add_argument("--sync-interval", default="2m",
                        help="nats-server's sync_interval for grid1/grid2 (default 2m, JetStream's default)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="py-spy on the client and the PU/echo processes during the measured window into DIR")
    parser.add_argument("--quiet-wait-s", type=float, default=180, help="wait up to this long for an idle machine")
    parser.add_argument("--retries", type=int, default=2, help="re-runs of a disturbed target")
    parser.add_argument("--interference-max", type=float, default=0.1, help="cores of other load (default 0.1)")
    parser.add_argument("--gc-probe", type=Path, default=None, metavar="DIR",
                        help="meter the cyclic GC in the client and the PUs (bench/gcprobe) during the window")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--store", default="none", help="the grids' store: none (default) or embedded")
    parser.add_argument("--keep", action="store_true", help="keep the grids' data dirs")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    warmup_s, measure_s = (1.0, 3.0) if args.quick else (2.0, 10.0)
    spec = RunSpec(args.events or events_for(warmup_s + measure_s, args.rate_guess), warmup_s, measure_s,
                   CONCURRENCY_DEFAULT, args.seed)
    sources = Sources(pg_url=args.pg, redis_url=args.redis, store=args.store, sync_interval=args.sync_interval,
                      pg_pool_impl=args.pg_pool_impl, pg_pool_size=args.pg_pool, keep=args.keep)
    wanted = [ALIASES.get(t.strip(), t.strip()) for t in args.targets.split(",") if t.strip()]
    packaged, _ = choose_targets(",".join(t for t in wanted if t not in BENCH_ONLY) or None, sources)
    names = [t for t in wanted if t in BENCH_ONLY or t in packaged]
    if args.gc_probe:  # the PUs inherit it: bench/gcprobe/sitecustomize.py meters their collector
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR / "gcprobe"),
                                                                   os.environ.get("PYTHONPATH")]))
        os.environ["SPACEGRID_BENCH_GC_DIR"] = str(args.gc_probe)
    install_uvloop()
    print(f"{spec.events} events, warm-up {warmup_s} s, measured {measure_s} s", file=sys.stderr, flush=True)
    driver = asyncio.run(measure(NullTarget(), RunSpec(spec.events, 0.2, DRIVER_PROBE_S, spec.concurrency, args.seed)))
    results = {name: run_with_retries(name, target_factory(name, sources, spec), spec, args) for name in names}
    config = {"events": spec.events, "warmup_s": warmup_s, "measure_s": measure_s, "concurrency": spec.concurrency,
              "seed": args.seed, "targets": names, "store": args.store, "sync_interval": args.sync_interval}
    document = report.build({name: [result] for name, result in results.items()}, config, BASELINE)
    document["driver"] = {"cpu_us_per_op": driver["cpu_us_per_op"]["client"], "ops_per_s": driver["ops_per_s"]}
    report.print_report(document, Console(width=max(160, Console().width)))
    print(f"driver alone (no-op target): {document['driver']['cpu_us_per_op']} µs of client CPU per op")
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    for path in sorted(args.profile.glob("*.txt")) if args.profile else []:
        if path.stat().st_size:
            summary = summarize_profile(path)
            (args.profile / (path.stem + ".summary")).write_text(summary + "\n")
            print(summary)
    if not document["passed"]:
        raise SystemExit(f"FAILED: {', '.join(document['failed'])}")


if __name__ == "__main__":
    main()
