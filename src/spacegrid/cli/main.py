"""The `spacegrid` commands: up, pu, put, get, delete, call, query, status (chaos and reconcile live beside)."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess  # nosec B404  # Popen types and TimeoutExpired only; the console starts via lifeline.spawn
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from spacegrid.cli.auth import auth
from spacegrid.cli.bench import bench
from spacegrid.cli.chaos import chaos
from spacegrid.cli.console import console_command, start_console, stop_console
from spacegrid.cli.events import events
from spacegrid.cli.listen import listen
from spacegrid.cli.gateway import gateway_command
from spacegrid.cli.common import (access_options, app_option, connect_timeout_option, console, data_dir_option,
                                  deadline_option, fail, given_access, given_settings, given_store, grid_limit_options, lock_data_dir, nats_option,
                                  parse_json, print_json, resolve, within_connect_bound, with_client)
from spacegrid.durability import DEFAULT_FSYNC, INTERVAL_DEFAULT, Fsync
from spacegrid.config import (NO_STORE, NOT_RECORDED, OPTIONS, STORE_PASSWORD_ENV, STORE_PASSWORD_FILE, GridConfig,
                              durability_of, written_by)
from spacegrid.cli.reconcile import reconcile
from spacegrid.cli.repair import repair
from spacegrid.cli.scale import apply_scale_request, roll, scale
from spacegrid.cli.top import top
from spacegrid.scaling import take_scale_request
from spacegrid.engine.connection import install_uvloop
from spacegrid.errors import SpacegridError
from spacegrid.inspect import GridStatus, read_status
from spacegrid.launcher import DEFAULT_APP, LocalGrid, last_app, load_space, read_grid_file
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
@click.option("--store", "store_url", default=None,
              help="Durable store: a postgresql://... or sqlite:///... URL, 'embedded' (SQLite under --data-dir) "
                   "or 'none' [default: the grid's; a new grid's: embedded]. A password in the URL is kept in "
                   f"DATA_DIR/{STORE_PASSWORD_FILE} (0600), never in the grid's configuration.")
@click.option("--fsync", "fsync", default=DEFAULT_FSYNC.label, show_default=True,
              help="When the embedded nats-server fsyncs the log: 'always' (before acknowledging a write: a power cut "
                   "loses nothing acknowledged) or 'interval[:DURATION]' (acknowledge first, fsync every DURATION, "
                   f"default {INTERVAL_DEFAULT}: faster, a power cut can lose that much). docs/durability.md; "
                   "recorded in the grid's configuration.")
@grid_limit_options
@click.option("--ready-timeout-s", type=float, default=120.0, show_default=True)
@click.option("--stop-timeout-s", type=click.FloatRange(GRID_STOP_TIMEOUT_S_MIN, 3600), default=GRID_STOP_TIMEOUT_S,
              show_default=True, help="Ctrl-C or SIGTERM stops the grid within this (PU hand-off and store drain "
                                      "included); what still runs then is killed.")
@click.option("--listen", "listen_host", default="127.0.0.1", show_default=True,
              help="The address the embedded NATS listens on (its certificate names it). Beyond loopback only with "
                   "authentication and TLS (the default; refused with --insecure).")
@click.option("--insecure", is_flag=True, help="Run the embedded NATS without authentication: anyone who can reach "
                                                "its port owns the grid. Loopback development only.")
@click.option("--console-port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="The web console's port on loopback (0: a free one).")
@click.option("--no-console", is_flag=True, help="Do not serve the web console.")
@access_options
def up(pus: int, data_dir: Path, app: str | None, nats_url: str | None, port: int | None, nats_cluster: str,
       store_url: str | None, fsync: str, ready_timeout_s: float, stop_timeout_s: float, listen_host: str,
       insecure: bool, console_port: int, no_console: bool, **limits: Any) -> None:
    """Run a grid here: an embedded nats-server (unless --nats), PUS processing units and the app (Ctrl-C stops it).
    The data dir is locked while it runs; its processes die with it, even on SIGKILL. A new grid gets a configuration
    (store, limits, durability, metrics) that every PU takes; a restart on the same data dir must agree with it."""
    pu_args = [arg for name, value in given_settings(limits).items() for arg in (OPTIONS[name], str(value))]
    grid = LocalGrid(data_dir, app or last_app(data_dir) or DEFAULT_APP, nats_url=nats_url, nats_port=port,
                     nats_cluster=int(nats_cluster), store=store_url, sync_interval=Fsync.parse(fsync).sync_interval,
                     pu_args=pu_args,
                     stop_timeout_s=stop_timeout_s, secure=not insecure, nats_host=listen_host,
                     access=None if nats_url is None else given_access(None, "admin"))
    if insecure:
        console.print("[bold red]INSECURE[/bold red]: the embedded NATS takes connections without credentials; "
                      "anything that reaches its port can read and change every value. Loopback development only.")
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops the grid as Ctrl-C does, wherever the launcher is
    console_process: subprocess.Popen[bytes] | None = None
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
        if grid.secrets is not None:
            console.print(f"  auth      credentials required; this grid's are in {grid.secrets.directory} "
                          f"(admin.creds, client.creds, reader.creds; --creds or SPACEGRID_CREDS elsewhere)")
        console.print(f"  store     {grid.store_url or 'none (in memory and the log only)'}")
        if not no_console:
            console_process, console_url = start_console(data_dir, console_port)
            console_log = data_dir / "logs" / "console.log"
            console.print(f"  console   {console_url or f'did not start: see {console_log}'}")
        console.print(f"  grid file {data_dir / 'grid.json'}   logs {data_dir / 'logs'}")
        creds = (f" --creds $(spacegrid auth creds pu --data-dir {data_dir}) --tls-ca {grid.client_access.tls_ca_path}"
                 if grid.secrets is not None else "")
        console.print(f"  add a PU  spacegrid pu --nats {grid.url} --app {grid.app}{creds}   (store, limits, metrics: "
                      f"the grid's configuration)")
        console.print("  try       spacegrid call create_event E1 '{\"seats\": 100}'   then   spacegrid status")
        console.print("Ctrl-C stops the grid; `spacegrid scale N` starts or stops PUs.")
        while True:
            time.sleep(0.2)
            wanted = take_scale_request(data_dir)
            if wanted is not None:
                apply_scale_request(grid, wanted)
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
        if console_process is not None:
            stop_console(console_process)
        _stop_grid(grid)
        fail(str(exc))
    if console_process is not None:
        stop_console(console_process)
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
@click.option("--replicas", type=click.IntRange(1, 5), default=None,
              help="Stream and KV replicas (3 on a NATS cluster). Grid-wide [default: the grid's; a new grid's: 1]")
@grid_limit_options
@click.option("--store", "store_url", default=None, envvar="SPACEGRID_STORE",
              help="Durable store URL: postgresql://user@host/db, sqlite:///path or 'none'. Grid-wide [default: the "
                   "grid's; a new grid's: none]")
@click.option("--store-password-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help=f"The store's password, in a file of mode 0600 [default: ${STORE_PASSWORD_ENV}, else "
                   f"DATA_DIR/{STORE_PASSWORD_FILE} if there is one].")
@click.option("--metrics/--no-metrics", default=None,
              help="Serve Prometheus metrics. Grid-wide [default: the grid's; a new grid's: on]")
@click.option("--metrics-port", type=int, default=None,
              help="This PU's metrics port [default: a free one, when the grid serves metrics].")
@click.option("--metrics-host", default=None, help="Grid-wide [default: the grid's; a new grid's: 127.0.0.1]")
@click.option("--stop-timeout-s", type=click.FloatRange(0.5, 3600), default=DEFAULT_LIMITS.pu_stop_timeout_s,
              show_default=True, help="SIGTERM: hand off and stop within this, then exit regardless.")
@click.option("--nats-lost-exit-s", type=click.FloatRange(0.5, 86400), default=DEFAULT_LIMITS.pu_nats_lost_exit_s,
              show_default=True, help="Exit (non-zero) after NATS has been unreachable this long.")
@connect_timeout_option
@access_options
@click.option("--wait-for-config", is_flag=True,
              help="Wait for the grid's configuration (written by `spacegrid init` or `up`) instead of writing one: "
                   "for PUs that start with the grid, as on Kubernetes or next to `spacegrid up`.")
def pu(app: str | None, nats_url: str | None, data_dir: Path, store_url: str | None,
       store_password_file: Path | None, metrics_port: int | None, stop_timeout_s: float, nats_lost_exit_s: float,
       connect_timeout_s: float, wait_for_config: bool, **settings: Any) -> None:
    """Run one processing unit in this process. It takes the grid's configuration (store, limits, replicas,
    metrics) from NATS; an option given here that differs from it is refused. With --data-dir given (or without
    --nats/--app, read from its grid.json), the PU locks that data dir: one PU or grid per data dir."""
    from spacegrid.security.secrets import member_of_creds
    from spacegrid.unit.runner import PuOptions, join_grid

    context = click.get_current_context()
    uses_data_dir = (context.get_parameter_source("data_dir") is not ParameterSource.DEFAULT
                     or nats_url is None or app is None)
    lock = lock_data_dir(data_dir, "spacegrid pu") if uses_data_dir else None
    url, space = resolve(data_dir, nats_url, app)
    app = app or _grid_file_app(data_dir) or DEFAULT_APP
    store, password = given_store(store_url)
    given = given_settings({**settings, "store": store})
    if metrics_port is not None and settings["metrics"] is None:
        given["metrics"] = True  # a metrics port asks for metrics
    base = Limits(pu_stop_timeout_s=stop_timeout_s, pu_nats_lost_exit_s=nats_lost_exit_s,
                  connect_timeout_s=connect_timeout_s)
    access = given_access(None, "pu")
    member_id = None if access.creds_path is None else member_of_creds(access.read_creds())
    options = PuOptions(metrics_port, password, store_password_file, data_dir, base, create_config=not wait_for_config,
                        access=access, member_id=member_id)
    install_uvloop()
    try:
        asyncio.run(join_grid(space, app, url, given, options))
    finally:
        if lock is not None:
            lock.release()


def _grid_file_app(data_dir: Path) -> str | None:
    try:
        return read_grid_file(data_dir).get("app")
    except (SpacegridError, ValueError, OSError):
        return None


@cli.command()
@click.option("--nats", "nats_url", required=True, help="NATS URL(s) of the grid, comma-separated.")
@click.option("--app", required=True, help="MODULE:SPACE the grid serves.")
@click.option("--store", "store_url", default=NO_STORE, show_default=True,
              help="Durable store URL (postgresql://user@host/db, sqlite:///path) or 'none'. Give PUs its password "
                   f"through ${STORE_PASSWORD_ENV} or --store-password-file, never here.")
@click.option("--replicas", type=click.IntRange(1, 5), default=1, show_default=True,
              help="Stream and KV replicas (3 on a NATS cluster).")
@click.option("--fsync", "fsync", default=None,
              help="Record the fsync policy your nats-servers run with: 'always' (their jetstream block says "
                   "sync_interval: always) or 'interval:DURATION' (sync_interval: DURATION; JetStream's default is "
                   "interval:2m). Informational; see docs/durability.md.")
@grid_limit_options
@click.option("--metrics/--no-metrics", default=True, show_default=True, help="PUs serve Prometheus metrics.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="The address PUs serve metrics on.")
@click.option("--force", is_flag=True, help="Replace a configuration that differs (every PU must be restarted).")
@click.option("--show", is_flag=True, help="Print the grid's configuration as JSON; change nothing.")
@connect_timeout_option
@access_options
def init(nats_url: str, app: str, store_url: str, replicas: int, fsync: str | None, metrics: bool,
         metrics_host: str, force: bool, show: bool, connect_timeout_s: float, **limits: Any) -> None:
    """Write the configuration of a production grid (NATS run by someone else) into its KV: store, replicas,
    durability, limits, metrics. Its PUs then need only `spacegrid pu --nats URL --app M:S`. Creates the space's
    stream and buckets if needed. A configuration that differs is refused; --force replaces it."""
    from spacegrid import config

    space = load_space(app)
    base = replace(DEFAULT_LIMITS, connect_timeout_s=connect_timeout_s)
    if show:
        shown = asyncio.run(within_connect_bound(config.show(nats_url, space.name, base, given_access(None, "admin")),
                                                 nats_url, connect_timeout_s))
        if shown is None:
            fail(f"grid {space.name!r} at {nats_url} has no configuration yet")
        print_json(shown.to_wire())
        return
    store, password = given_store(store_url)
    if password is not None:
        console.print(f"[yellow]the store password in --store was not written anywhere[/yellow]: give it to each PU "
                      f"through ${STORE_PASSWORD_ENV} or --store-password-file (a file of mode 0600)")
    proposed = GridConfig(app=app, space=space.name, partitions=space.partitions, store=store or NO_STORE,
                          replicas=replicas,
                          durability=NOT_RECORDED if fsync is None else durability_of(Fsync.parse(fsync).sync_interval),
                          metrics=metrics,
                          metrics_host=metrics_host, written_by=written_by("spacegrid init"), **given_settings(limits))
    grid, outcome = asyncio.run(config.initialize(nats_url, proposed, force, base, given_access(None, "admin")))
    if outcome == "replaced":
        console.print(f"[bold red]REPLACED the configuration of grid {space.name!r}.[/bold red] Running PUs still use "
                      f"the old one: restart EVERY PU now (SIGTERM one, start it again, wait until `spacegrid status` "
                      f"shows all partitions active, then the next).")
    else:
        console.print(f"grid {space.name!r}: configuration {'written' if outcome == 'created' else 'unchanged (the same was there)'}; "
                      f"add PUs with `spacegrid pu --nats {nats_url} --app {app}`")
    print_json(grid.to_wire())


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
@access_options
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
@access_options
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
@access_options
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
@access_options
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
@access_options
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
@access_options
def status(data_dir: Path, nats_url: str | None, app: str | None, as_json: bool, connect_timeout_s: float) -> None:
    """Members and partitions of the grid."""
    url, space = resolve(data_dir, nats_url, app)
    access = given_access(data_dir, "reader")
    grid = asyncio.run(within_connect_bound(read_status(url, space.name, space.partitions, connect_timeout_s, access), url,
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
    if any(row["log_missing"] for row in rows):
        out.print(f"[red]the log stream of space {space.name} is missing (deleted?): the PUs refuse writes and serve "
                  "reads. Run `spacegrid repair --recreate-log` (docs/runbooks/log-missing.md)[/red]")
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


cli.add_command(auth)
cli.add_command(bench)
cli.add_command(chaos)
cli.add_command(events)
cli.add_command(listen)
cli.add_command(console_command)
cli.add_command(gateway_command)
cli.add_command(top)
cli.add_command(scale)
cli.add_command(roll)
cli.add_command(reconcile)
cli.add_command(repair)


def main() -> None:
    try:
        cli()
    except SpacegridError as exc:
        fail(str(exc))


if __name__ == "__main__":
    main()
