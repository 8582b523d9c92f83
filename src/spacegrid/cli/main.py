"""The `spacegrid` commands: up, pu, put, get, delete, call, query, status (chaos and reconcile live beside)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from spacegrid.cli.chaos import chaos
from spacegrid.cli.common import (app_option, connect_timeout_option, console, data_dir_option, deadline_option, fail,
                                  lock_data_dir, nats_option, parse_json, print_json, resolve, within_connect_bound,
                                  with_client)
from spacegrid.cli.reconcile import reconcile
from spacegrid.engine.connection import install_uvloop
from spacegrid.errors import SpacegridError
from spacegrid.inspect import GridStatus, read_status
from spacegrid.launcher import DEFAULT_APP, EMBEDDED_STORE, LocalGrid
from spacegrid.limits import DEFAULT_LIMITS, GRID_STOP_TIMEOUT_S, GRID_STOP_TIMEOUT_S_MIN, Limits

STATUS_READ_S = 10.0  # after connecting: reading every member's record


@click.group()
@click.option("--log-level", default="WARNING", show_default=True)
def cli(log_level: str) -> None:
    """spacegrid: partitioned in-memory state and processing units on NATS JetStream."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--pus", type=click.IntRange(1, 64), default=2, show_default=True, help="Processing units to start.")
@data_dir_option
@app_option
@nats_option
@click.option("--port", type=int, default=None, help="Port of the embedded nats-server (default: a free one).")
@click.option("--nats-cluster", type=click.Choice(["0", "3", "5"]), default="0", show_default=True,
              help="Start a local NATS cluster of this many nodes instead of one (streams and KV get 3 replicas).")
@click.option("--store", "store_url", default=EMBEDDED_STORE, show_default=True,
              help="Durable store: a postgresql://... or sqlite:///... URL, 'embedded' (SQLite under --data-dir) "
                   "or 'none'.")
@click.option("--ready-timeout-s", type=float, default=120.0, show_default=True)
@click.option("--stop-timeout-s", type=click.FloatRange(GRID_STOP_TIMEOUT_S_MIN, 3600), default=GRID_STOP_TIMEOUT_S,
              show_default=True, help="Ctrl-C or SIGTERM stops the grid within this (PU hand-off and store drain "
                                      "included); what still runs then is killed.")
def up(pus: int, data_dir: Path, app: str | None, nats_url: str | None, port: int | None, nats_cluster: str,
       store_url: str, ready_timeout_s: float, stop_timeout_s: float) -> None:
    """Run a grid here: an embedded nats-server (unless --nats), PUS processing units and the app (Ctrl-C stops it).
    The data dir is locked while it runs; its processes die with it, even on SIGKILL."""
    grid = LocalGrid(data_dir, app or DEFAULT_APP, nats_url=nats_url, nats_port=port, nats_cluster=int(nats_cluster),
                     store=store_url, stop_timeout_s=stop_timeout_s)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops the grid as Ctrl-C does, wherever the launcher is
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("starting NATS", total=grid.space.partitions)
            grid.start(pus)
            progress.update(task, description=f"{pus} PUs taking partitions")

            started_s = time.monotonic()

            def show(status: GridStatus) -> None:
                loaded = sum(int(info.get("loaded_rows", 0)) for info in status.members.values())
                if loaded:  # a cold start over an existing store
                    rate = loaded / max(time.monotonic() - started_s, 1e-3)
                    progress.update(task, description=f"loading from the store: {loaded:,} rows ({rate:,.0f} rows/s)")
                progress.update(task, completed=status.active_partitions)

            grid.wait_ready(ready_timeout_s, show, members=pus)
            progress.update(task, description="ready", completed=grid.space.partitions)
        console.print(f"[green]spacegrid is up[/green]: space [bold]{grid.space.name}[/bold] "
                      f"({grid.space.partitions} partitions) on {pus} PUs")
        console.print(f"  NATS      {grid.url}")
        console.print(f"  store     {grid.store_url or 'none (in memory and the log only)'}")
        console.print(f"  grid file {data_dir / 'grid.json'}   logs {data_dir / 'logs'}")
        console.print("  try       spacegrid call create_event E1 '{\"seats\": 100}'   then   spacegrid status")
        console.print("Ctrl-C stops the grid.")
        while True:
            time.sleep(0.2)
            for pu in grid.pus:
                if not pu.alive() and pu.popen.returncode not in (0,):
                    console.print(f"[yellow]PU {pu.index} (pid {pu.pid}) exited with {pu.popen.returncode}[/yellow]; "
                                  f"see {pu.log_path}")
                    grid.pus.remove(pu)
                    grid.write_grid_file()
                    break
    except KeyboardInterrupt:
        pass
    except SpacegridError as exc:
        _stop_grid(grid)
        fail(str(exc))
    console.print(f"stopping the grid (at most {stop_timeout_s:g} s; Ctrl-C again kills it) ...")
    started_s = time.monotonic()
    _stop_grid(grid)
    console.print(f"stopped in {time.monotonic() - started_s:.1f} s.")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop_grid(grid: LocalGrid) -> None:
    """grid.stop() (bounded); a second Ctrl-C or SIGTERM meanwhile kills what is left at once."""
    try:
        grid.stop()
    except KeyboardInterrupt:
        grid.kill()
        grid.stop()  # nothing left to wait for: unlocks the data dir and removes grid.json


@cli.command()
@app_option
@nats_option
@data_dir_option
@click.option("--replicas", type=int, default=1, show_default=True, help="Stream and KV replicas (3 on a NATS cluster).")
@click.option("--heartbeat-interval-s", type=float, default=DEFAULT_LIMITS.heartbeat_interval_s, show_default=True)
@click.option("--lease-s", type=float, default=DEFAULT_LIMITS.lease_s, show_default=True,
              help="Reads are served only this long after the last renewed heartbeat was sent.")
@click.option("--heartbeat-timeout-s", type=float, default=DEFAULT_LIMITS.heartbeat_timeout_s, show_default=True)
@click.option("--handler-time-limit-s", type=float, default=DEFAULT_LIMITS.handler_time_limit_s, show_default=True)
@click.option("--catch-ups-max", type=int, default=DEFAULT_LIMITS.catch_ups_max, show_default=True,
              help="Backups catching up with the log at once (paces live migration).")
@click.option("--store", "store_url", default=None, envvar="SPACEGRID_STORE",
              help="Durable store URL: postgresql://user@host/db or sqlite:///path (default: none).")
@click.option("--write-behind-delay-s", type=float, default=DEFAULT_LIMITS.write_behind_delay_s, show_default=True)
@click.option("--write-behind-batch-rows", type=int, default=DEFAULT_LIMITS.write_behind_batch_rows, show_default=True)
@click.option("--log-trim-age-s", type=float, default=DEFAULT_LIMITS.log_trim_age_s, show_default=True,
              help="The log keeps what was persisted this long ago, for exactly-once retries after a double failure; "
                   "keep it above clients' call deadlines.")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port (0: a free one).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@click.option("--stop-timeout-s", type=click.FloatRange(0.5, 3600), default=DEFAULT_LIMITS.pu_stop_timeout_s,
              show_default=True, help="SIGTERM: hand off and stop within this, then exit regardless.")
@click.option("--nats-lost-exit-s", type=click.FloatRange(0.5, 86400), default=DEFAULT_LIMITS.pu_nats_lost_exit_s,
              show_default=True, help="Exit (non-zero) after NATS has been unreachable this long.")
@connect_timeout_option
def pu(app: str | None, nats_url: str | None, data_dir: Path, replicas: int, heartbeat_interval_s: float,
       lease_s: float, heartbeat_timeout_s: float, handler_time_limit_s: float, catch_ups_max: int,
       store_url: str | None, write_behind_delay_s: float, write_behind_batch_rows: int, log_trim_age_s: float,
       metrics_port: int | None, metrics_host: str, stop_timeout_s: float, nats_lost_exit_s: float,
       connect_timeout_s: float) -> None:
    """Run one processing unit in this process. With --data-dir given (or without --nats/--app, read from its
    grid.json), the PU locks that data dir: one PU or grid per data dir."""
    from spacegrid.unit.runner import run_pu

    uses_data_dir = (click.get_current_context().get_parameter_source("data_dir") is not ParameterSource.DEFAULT
                     or nats_url is None or app is None)
    lock = lock_data_dir(data_dir, "spacegrid pu") if uses_data_dir else None
    url, space = resolve(data_dir, nats_url, app)
    limits = Limits(heartbeat_interval_s=heartbeat_interval_s, lease_s=lease_s, heartbeat_timeout_s=heartbeat_timeout_s,
                    handler_time_limit_s=handler_time_limit_s, catch_ups_max=catch_ups_max,
                    write_behind_delay_s=write_behind_delay_s, write_behind_batch_rows=write_behind_batch_rows,
                    log_trim_age_s=log_trim_age_s, pu_stop_timeout_s=stop_timeout_s,
                    pu_nats_lost_exit_s=nats_lost_exit_s, connect_timeout_s=connect_timeout_s)
    install_uvloop()
    metrics = None if metrics_port is None else (metrics_host, metrics_port)
    try:
        asyncio.run(run_pu(space, url, limits, replicas, metrics, store_url))
    finally:
        if lock is not None:
            lock.release()


@cli.command()
@click.argument("map_name", metavar="MAP")
@click.argument("key")
@click.argument("value_json", metavar="JSON")
@click.option("--expected-version", type=int, default=None, help="Compare-and-set: 0 means the key must not exist.")
@data_dir_option
@nats_option
@app_option
@deadline_option
@connect_timeout_option
def put(map_name: str, key: str, value_json: str, expected_version: int | None, data_dir: Path,
        nats_url: str | None, app: str | None, deadline_s: float, connect_timeout_s: float) -> None:
    """Store a JSON value; prints the new version."""
    value = parse_json(value_json, "the value")
    version = with_client(data_dir, nats_url, app, connect_timeout_s,
                          lambda c: c.put(map_name, key, value, expected_version, deadline_s))
    print_json({"version": version})


@cli.command()
@click.argument("map_name", metavar="MAP")
@click.argument("key")
@data_dir_option
@nats_option
@app_option
@deadline_option
@connect_timeout_option
def get(map_name: str, key: str, data_dir: Path, nats_url: str | None, app: str | None, deadline_s: float,
        connect_timeout_s: float) -> None:
    """Print {"value": ..., "version": N}; exits 3 if the key does not exist."""
    entry = with_client(data_dir, nats_url, app, connect_timeout_s, lambda c: c.get_entry(map_name, key, deadline_s))
    if entry is None:
        console.print(f"{map_name}[{key!r}] does not exist")
        sys.exit(3)
    print_json({"value": entry[0], "version": entry[1]})


@cli.command()
@click.argument("map_name", metavar="MAP")
@click.argument("key")
@click.option("--expected-version", type=int, default=None)
@data_dir_option
@nats_option
@app_option
@deadline_option
@connect_timeout_option
def delete(map_name: str, key: str, expected_version: int | None, data_dir: Path, nats_url: str | None,
           app: str | None, deadline_s: float, connect_timeout_s: float) -> None:
    """Delete a key; prints whether it existed."""
    existed = with_client(data_dir, nats_url, app, connect_timeout_s,
                          lambda c: c.delete(map_name, key, expected_version, deadline_s))
    print_json({"deleted": existed})


@cli.command()
@click.argument("handler")
@click.argument("key")
@click.argument("args_json", metavar="[JSON-ARGS]", required=False)
@data_dir_option
@nats_option
@app_option
@deadline_option
@connect_timeout_option
def call(handler: str, key: str, args_json: str | None, data_dir: Path, nats_url: str | None, app: str | None,
         deadline_s: float, connect_timeout_s: float) -> None:
    """Run a handler on the PU that owns KEY; prints its JSON result."""
    args = parse_json(args_json, "the handler arguments")
    print_json(with_client(data_dir, nats_url, app, connect_timeout_s, lambda c: c.execute(handler, key, args, deadline_s)))


@cli.command()
@click.argument("name")
@click.argument("args_json", metavar="[JSON-ARGS]", required=False)
@data_dir_option
@nats_option
@app_option
@deadline_option
@connect_timeout_option
def query(name: str, args_json: str | None, data_dir: Path, nats_url: str | None, app: str | None,
          deadline_s: float, connect_timeout_s: float) -> None:
    """Run a read-only query on every partition; prints the merged JSON result."""
    args = parse_json(args_json, "the query arguments")
    print_json(with_client(data_dir, nats_url, app, connect_timeout_s, lambda c: c.query(name, args, deadline_s)))


@cli.command()
@data_dir_option
@nats_option
@app_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@connect_timeout_option
def status(data_dir: Path, nats_url: str | None, app: str | None, as_json: bool, connect_timeout_s: float) -> None:
    """Members and partitions of the grid."""
    url, space = resolve(data_dir, nats_url, app)
    grid = asyncio.run(within_connect_bound(read_status(url, space.name, space.partitions, connect_timeout_s), url,
                                            connect_timeout_s,
                                            STATUS_READ_S))
    if as_json:
        print_json(grid.to_json())
        return
    out = Console()
    members = Table(title=f"space {space.name}: table v{grid.table.version}, "
                          f"{grid.active_partitions}/{grid.table.partition_count} partitions active")
    for column in ("member", "alive", "host", "pid", "owns", "backups", "lag", "failovers", "active", "requests",
                   "appends"):
        members.add_column(column, justify="right" if column not in ("member", "alive", "host") else "left")
    for row in grid.to_json()["members"]:
        alive = ("leaving" if row["leaving"] else "yes") if row["alive"] else "[red]no[/red]"
        members.add_row(row["id"], alive, str(row["host"]), str(row["pid"]), str(len(row["partitions"])),
                        f"{len(row['ready_backups'])}/{len(row['backups'])}", str(row["backup_lag_records_max"]),
                        str(row["failovers"]),
                        str(len(row["active"])), str(row["requests"]), str(row["appends"]))
    out.print(members)
    rows = grid.to_json()["members"]
    if any("store_available" in row for row in rows):
        store = Table(title="store (write-behind)")
        for column in ("member", "available", "lag records", "lag s", "rows persisted", "errors", "dead letters"):
            store.add_column(column, justify="left" if column == "member" else "right")
        for row in rows:
            store.add_row(row["id"], "yes" if row.get("store_available") else "[red]no[/red]",
                          str(row.get("write_behind_lag_records", 0)), str(row.get("write_behind_lag_s", 0)),
                          str(row.get("store_rows", 0)), str(row.get("store_errors", 0)), str(row.get("dead_letters", 0)))
        out.print(store)
    maps_table = Table(title="maps (owned partitions; hit rate where entries are evicted)")
    for column in ("map", "entries", "hit rate", "misses", "evictions", "expirations"):
        maps_table.add_column(column, justify="left" if column == "map" else "right")
    for name in space.maps:
        totals = {field: sum(int(row["maps"].get(name, {}).get(field, 0)) for row in rows)
                  for field in ("entries", "hits", "misses", "evictions", "expirations")}
        reads = totals["hits"] + totals["misses"]
        maps_table.add_row(name, str(totals["entries"]), f"{totals['hits'] / reads:.1%}" if reads else "-",
                           str(totals["misses"]), str(totals["evictions"]), str(totals["expirations"]))
    out.print(maps_table)
    partitions = Table(title="partitions (owner@epoch)")
    partitions.add_column("partitions")
    partitions.add_column("owner")
    by_owner: dict[str, list[str]] = {}
    for p, (owner, epoch) in enumerate(zip(grid.table.owners, grid.table.epochs)):
        by_owner.setdefault(owner or "(none)", []).append(f"{p}@{epoch}")
    for owner, items in sorted(by_owner.items()):
        partitions.add_row(" ".join(items), owner)
    out.print(partitions)


cli.add_command(chaos)
cli.add_command(reconcile)


def main() -> None:
    try:
        cli()
    except SpacegridError as exc:
        fail(str(exc))


if __name__ == "__main__":
    main()
