"""`spacegrid chaos`: a seeded Jepsen-style run against a local grid, with a progress bar and summary tables."""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from spacegrid.chaos.faults import FAULT_KINDS

if TYPE_CHECKING:  # run and report import the checker and the worker: loaded only when the command runs
    from spacegrid.chaos.report import ChaosReport

RECOVERY_COLUMNS = (("first_ok_s", "first ok"), ("all_keys_s", "all keys"), ("all_keys_after_heal_s", "after heal"))


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_report(report: ChaosReport, out: Console) -> None:
    """The readable summary: faults by kind, operations by kind and outcome, violations and unknown verdicts."""
    verdict = "[green]PASS[/green]" if report.passed else "[red]FAIL[/red]"
    config = report.config
    out.print(f"chaos {verdict}: seed {report.seed}, {config['duration_s']:g} s, {config['pus']} PUs, "
              f"{config['workers']} workers, NATS {'3-node cluster' if config['nats_cluster'] >= 3 else 'single node'}, "
              f"faults {','.join(config['faults'])}")
    faults = Table(title="faults by kind (recovery s, mean / max: first ok op on any key, "
                         "slowest key's first ok op, slowest key after the heal)")
    for column in ("kind", "count", *(label for _, label in RECOVERY_COLUMNS), "unrecovered"):
        faults.add_column(column, justify="left" if column == "kind" else "right")
    for kind, stats in report.faults_by_kind().items():
        cells = [f"{_seconds(stats[name]['mean'])} / {_seconds(stats[name]['max'])}" for name, _ in RECOVERY_COLUMNS]
        faults.add_row(kind, str(stats["count"]), *cells, str(stats["all_keys_s"]["unrecovered"]))
    out.print(faults if report.faults else "no fault was injected: the run is too short for one")
    ops = Table(title="operations by kind and outcome")
    for column in ("kind", "ok", "fail", "info", "total"):
        ops.add_column(column, justify="left" if column == "kind" else "right")
    totals = {"ok": 0, "fail": 0, "info": 0}
    for kind, counts in report.op_counts.items():
        ops.add_row(kind, *(str(counts[o]) for o in totals), str(sum(counts.values())))
        totals = {o: totals[o] + counts[o] for o in totals}
    ops.add_row("all", *(str(v) for v in totals.values()), str(sum(totals.values())))
    out.print(ops)
    headline = (f"checks: {len(report.results)}, violations: {len(report.violations)} (0 expected), "
                f"unknown: {len(report.unknown)}")
    if report.violations or report.unknown:
        checks = Table(title=headline)
        for column in ("verdict", "check", "key", "message"):
            checks.add_column(column)
        for result in report.violations + report.unknown:
            checks.add_row("violation" if result.ok is False else "unknown", result.kind, str(result.key),
                           result.message)
        out.print(checks)
    else:
        out.print(headline)
    for result in report.violations:
        out.print(f"counterexample for {result.kind} {result.key}:")
        for op in result.counterexample:
            out.print(f"  {op.describe()}", markup=False, highlight=False)
    if report.startup_crashes:
        out.print(f"[yellow]PUs that crashed while the grid started (replaced):[/yellow] {report.startup_crashes}")
    if report.error:
        out.print(f"[red]run error:[/red] {report.error}")
    if report.kept_data:
        out.print(f"histories: {', '.join(str(path) for path in report.history_paths)}")
        out.print(f"data dir (grid logs under grid/logs): {report.data_dir}")


@click.command()
@click.option("--pus", type=click.IntRange(2, 16), default=3, show_default=True, help="Processing units.")
@click.option("--workers", type=click.IntRange(1, 12), default=4, show_default=True, help="Client processes.")
@click.option("--duration-s", type=click.FloatRange(5, 3600), default=60.0, show_default=True)
@click.option("--seed", type=int, default=None, help="Drives the fault schedule and the workers (default: random).")
@click.option("--faults", default=None,
              help=f"Comma list of {','.join(FAULT_KINDS)} (default: every kind the topology supports).")
@click.option("--nats-cluster", type=click.Choice(["0", "3"]), default="0", show_default=True,
              help="3: a local 3-node NATS cluster (needed by the nats-* faults).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Keep the grid and histories here (default: a temporary dir, removed after a passing run).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def chaos(pus: int, workers: int, duration_s: float, seed: int | None, faults: str | None, nats_cluster: str,
          data_dir: Path | None, as_json: bool) -> None:
    """Run client processes against a local grid while injecting seeded faults, then check the histories
    (per-key linearizability, counters, lost writes). Exits 1 on a violation or an unknown verdict."""
    from spacegrid.chaos.run import ChaosConfig, run_chaos

    config = ChaosConfig(pus=pus, workers=workers, duration_s=duration_s,
                         seed=seed if seed is not None else secrets.randbelow(1_000_000),
                         faults=None if faults is None else tuple(k.strip() for k in faults.split(",") if k.strip()),
                         nats_cluster=int(nats_cluster), data_dir=data_dir)
    config.kinds()  # a bad --faults fails here, before anything starts
    err = Console(stderr=True)
    with Progress(TextColumn("seed {task.fields[seed]}"), TextColumn("{task.description:<24}"), BarColumn(),
                  TextColumn("{task.completed:.0f}/{task.total:.0f} s"), TimeElapsedColumn(), console=err) as progress:
        task = progress.add_task("starting", total=duration_s, seed=config.seed)

        def show(phase: str, done: float, total: float) -> None:
            progress.update(task, description=phase, completed=done)

        report = run_chaos(config, show)
    if as_json:
        click.echo(json.dumps(report.to_json(), default=_jsonable))
    else:
        print_report(report, Console())
    sys.exit(0 if report.passed else 1)


def _jsonable(value: Any) -> Any:
    return str(value)
