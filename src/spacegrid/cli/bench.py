"""`spacegrid bench`: the ticket workload against the grid and, in the same run, PostgreSQL and Redis at each
durability class; invariant-checked, a progress bar per target, a rich table, --json and --plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from spacegrid.benchmark.workload import CONCURRENCY_DEFAULT, CONCURRENCY_MAX
from spacegrid.cli.common import fail
from spacegrid.errors import ConfigError

QUICK: Final = (1.0, 3.0)  # warm-up, measured seconds with --quick
FULL: Final = (2.0, 10.0)
DURATION_S_MAX: Final = 3600.0
ROUNDS_MAX: Final = 20


@click.command()
@click.option("--targets", default=None,
              help="Comma-separated, run in this order: grid1, grid2 (grids started for the run, fsync every "
                   "--sync-interval), grid1-fsync, grid2-fsync (sync_interval always), gateway1, gateway2 (grid1/grid2 "
                   "through `spacegrid gateway` over HTTP), pg-on, pg-off "
                   "(synchronous_commit), redis-always, redis-everysec (appendfsync); 'grid' for a running grid "
                   "(--data-dir/--nats). [default: grid1,grid1-fsync and each PostgreSQL/Redis one whose URL is given]")
@click.option("--pg", "pg_url", default=None, help="PostgreSQL URL [default: $SPACEGRID_BENCH_PG]; a schema of the "
                                                   "run's own is made and dropped.")
@click.option("--redis", "redis_url", default=None,
              help="Redis URL [default: $SPACEGRID_BENCH_REDIS]; keys under a prefix of the run's own, deleted "
                   "afterwards; appendonly and appendfsync are set for the run and restored.")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Measure the grid running from this data dir (its grid.json) as target 'grid'. It must serve "
                   "spacegrid.examples.tickets; the run's events (keys bench-<hex>-E*) stay in it.")
@click.option("--nats", "nats_url", default=None, help="Measure the grid at this NATS URL as target 'grid'.")
@click.option("--quick", is_flag=True, help=f"{QUICK[0]:g} s warm-up + {QUICK[1]:g} s measured per target "
                                            f"[default: {FULL[0]:g} + {FULL[1]:g}].")
@click.option("--duration-s", type=click.FloatRange(0.1, DURATION_S_MAX), default=None, help="Measured seconds per target.")
@click.option("--warmup-s", type=click.FloatRange(0, DURATION_S_MAX), default=None, help="Warm-up seconds per target.")
@click.option("--concurrency", type=click.IntRange(1, CONCURRENCY_MAX), default=CONCURRENCY_DEFAULT,
              show_default=True, help="Requests in flight (closed loop), one client process; PostgreSQL and Redis "
                                      "get as many connections.")
@click.option("--events", type=click.IntRange(1, 1_000_000), default=None,
              help="Events of 100 seats [default: enough that at most a quarter is sold at 40k ops/s].")
@click.option("--store", type=click.Choice(["none", "embedded"]), default="none", show_default=True,
              help="The started grids' store: none (memory and the log) or embedded (SQLite write-behind).")
@click.option("--sync-interval", default="1s", show_default=True,
              help="The started grids' nats-server fsync interval for grid1/grid2 (the -fsync ones: always).")
@click.option("--rounds", type=click.IntRange(1, ROUNDS_MAX), default=1, show_default=True,
              help="Run the targets this many times, interleaved (every target once per round), and report each "
                   "target's median round (a shared machine's noise moves single runs by 10-20%).")
@click.option("--insecure", is_flag=True,
              help="Start the grids without TLS and authentication (as `spacegrid up --insecure`): run it next to a "
                   "default run to see what security costs.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the whole report as JSON here.")
@click.option("--plot", "plot_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write throughput.png and latency.png here.")
def bench(targets: str | None, pg_url: str | None, redis_url: str | None, data_dir: Path | None,
          nats_url: str | None, quick: bool, duration_s: float | None, warmup_s: float | None, concurrency: int,
          events: int | None, store: str, sync_interval: str, rounds: int, insecure: bool, seed: int,
          json_path: Path | None, plot_dir: Path | None) -> None:
    """Run the ticket workload (70% availability, 25% reserve of 1-4 seats, 5% release; events of 100 seats)
    against each target in turn, check after each that no seat was sold twice and the server's state equals the
    client's ledger, and report ops/s, latency, CPU per operation and ratios to PostgreSQL with synchronous_commit
    on. Loopback services only; exits non-zero if a target failed to run or its check failed."""
    from spacegrid.benchmark import plots, report
    from spacegrid.benchmark.measure import RunSpec
    from spacegrid.benchmark.runner import (
        BASELINE,
        Sources,
        choose_targets,
        factory,
        run_one,
    )
    from spacegrid.benchmark.workload import events_for
    from spacegrid.engine.connection import install_uvloop

    out = Console(stderr=True)
    if data_dir is not None and nats_url is not None:
        fail("give the running grid by --data-dir or by --nats, not both")
    sources = Sources.from_env(pg_url=pg_url, redis_url=redis_url, data_dir=data_dir, nats_url=nats_url, store=store,
                               sync_interval=sync_interval, secure=not insecure)
    try:
        chosen, notes = choose_targets(targets, sources)
    except ConfigError as exc:
        fail(str(exc))
    for note in notes:
        out.print(f"[yellow]{note}[/yellow]")
    default_warmup_s, default_measure_s = QUICK if quick else FULL
    warmup_s = default_warmup_s if warmup_s is None else warmup_s
    measure_s = default_measure_s if duration_s is None else duration_s
    spec = RunSpec(events or events_for(warmup_s + measure_s), warmup_s, measure_s, concurrency, seed)
    install_uvloop()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
    with Progress(TextColumn("{task.description:<28}"), BarColumn(), TaskProgressColumn(),
                  TextColumn("{task.fields[ops]:>12}"), TimeElapsedColumn(), console=out) as progress:
        for round_no in range(1, rounds + 1):
            for name in chosen:
                label = name if rounds == 1 else f"{name} ({round_no}/{rounds})"
                task = progress.add_task(f"{label}: setting up", total=1.0, ops="")

                def tell(done: float, ops: int, task: Any = task, label: str = label) -> None:
                    progress.update(task, completed=done, ops=f"{ops:,} ops",
                                    description=f"{label}: {'running' if done < 1 else 'checking'}")

                result = run_one(name, factory(name, sources, spec), spec, tell)
                results[name].append(result)
                verdict = "ok" if result["check"]["ok"] else "FAILED"
                progress.update(task, completed=1.0, description=f"{label}: {verdict}")
    config = {"events": spec.events, "warmup_s": warmup_s, "measure_s": measure_s, "concurrency": concurrency,
              "seed": seed, "targets": chosen, "store": store, "sync_interval": sync_interval, "rounds": rounds,
              "security": "none" if insecure else "TLS + credentials"}
    document = report.build(results, config, BASELINE)
    report.print_report(document, Console(width=max(160, Console().width)))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(document, indent=2) + "\n")
        out.print(f"wrote {json_path}")
    if plot_dir is not None:
        for path in plots.plot(document, plot_dir):
            out.print(f"wrote {path}")
    if not document["passed"]:
        sys.exit(1)
