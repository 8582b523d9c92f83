"""`spacegrid top`: a live terminal view of a running grid: each PU's throughput, latency, partitions and lags."""

from __future__ import annotations

import asyncio
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from spacegrid.cli.common import (access_options, app_option, connect_timeout_option, data_dir_option,
                                  given_access, nats_option, open_transport, resolve, run_until_interrupted)

TOP_FRAMES_ONCE = 2  # --once: a rate needs two snapshots
PIPED_WIDTH_CHARS = 200  # output to a pipe or file: wide enough that no column is cut


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(view: dict[str, Any], ops_by_member: dict[str, float | None]) -> Group:
    """One frame: a header line and a row per PU."""
    alive = [row for row in view["members"] if row["alive"]]
    total_ops = sum(ops for ops in ops_by_member.values() if ops is not None)
    header = Text.assemble(
        ("spacegrid ", "bold"), (view["space"], "bold cyan"),
        f"   PUs {len(alive)}/{len(view['members'])}   table v{view['table_version']}   partitions active "
        f"{view['active_partitions']}/{len(view['partitions'])}   ops/s {total_ops:,.0f}   ",
        ("ready" if view["ready"] else "NOT READY", "green" if view["ready"] else "bold red"))
    table = Table(box=None, header_style="bold")
    for column in ("member", "alive", "ops/s", "write p50 ms", "write p99 ms", "read p99 ms", "primary", "backups",
                   "repl lag s", "wb lag s", "requests", "failovers"):
        table.add_column(column, justify="left" if column in ("member", "alive") else "right")
    for row in view["members"]:
        ops = ops_by_member.get(row["id"])
        table.add_row(row["id"], "yes" if row["alive"] else "[red]no[/red]", "-" if ops is None else f"{ops:,.0f}",
                      _ms(row.get("write_p50_ms")), _ms(row.get("write_p99_ms")), _ms(row.get("read_p99_ms")),
                      str(len(row["partitions"])), f"{len(row['ready_backups'])}/{len(row['backups'])}",
                      f"{row.get('replication_lag_s_max', 0.0):.2f}", f"{row.get('write_behind_lag_s', 0.0):.2f}",
                      f"{row['requests']:,}", str(row["failovers"]))
    errors = view.get("errors") or {}
    footer = Text("errors: " + ", ".join(f"{code} {count:,.0f}" for code, count in sorted(errors.items()))
                  if errors else "errors: none", style="dim")
    return Group(header, table, footer)


@click.command()
@data_dir_option
@nats_option
@app_option
@click.option("--interval-s", type=click.FloatRange(0.2, 60), default=1.0, show_default=True)
@click.option("--once", is_flag=True, help="Print one frame (after two reads, for the rates) and exit.")
@connect_timeout_option
@access_options
def top(data_dir: Path, nats_url: str | None, app: str | None, interval_s: float, once: bool,
        connect_timeout_s: float) -> None:
    """A live view of the grid's PUs: ops/s, write and read latency (in the PU, over the last interval),
    partitions held, replication and write-behind lag, failovers; errors by class. Ctrl-C ends it."""
    from spacegrid.console.state import GridView
    from spacegrid.engine.subjects import Names

    url, space = resolve(data_dir, nats_url, app)
    access = given_access(data_dir, "reader")
    out = Console(width=None if sys.stdout.isatty() else PIPED_WIDTH_CHARS)

    async def run() -> None:
        transport = await open_transport(url, "spacegrid-top", access, connect_timeout_s)
        try:
            names = Names(space.name)
            view = GridView(await transport.coordination(names), names, space.partitions)
            previous: dict[str, tuple[int, float]] = {}
            frames = 0
            with nullcontext() if once else Live(console=out, auto_refresh=False, transient=False) as live:
                while True:
                    snapshot = await view.snapshot()
                    ops: dict[str, float | None] = {}
                    for row in snapshot["members"]:
                        before = previous.get(row["id"])
                        now = (int(row["requests"]), float(snapshot["read_at_s"]))
                        ops[row["id"]] = None if before is None or now[1] <= before[1] else max(
                            0.0, (now[0] - before[0]) / (now[1] - before[1]))
                        previous[row["id"]] = now
                    frames += 1
                    if once and frames >= TOP_FRAMES_ONCE:
                        out.print(render(snapshot, ops))
                        return
                    if not once:
                        live.update(render(snapshot, ops), refresh=True)
                    await asyncio.sleep(interval_s)
        finally:
            await transport.close()

    run_until_interrupted(run())
