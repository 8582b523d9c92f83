"""`spacegrid reconcile`: compare the grid with its store partition by partition, report drift, repair on request."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from spacegrid.cli.common import (
    access_options,
    given_access,
    app_option,
    connect_timeout_option,
    data_dir_option,
    nats_option,
    open_client,
    read_running_grid_file,
    resolve,
)
from spacegrid.errors import ConfigError
from spacegrid.config import read_store_password, with_store_password
from spacegrid.reconcile import REPAIR_DIRECTIONS, PartitionReport, Reconciler
from spacegrid.reconcile import reconcile as run_reconcile


@click.command()
@data_dir_option
@nats_option
@app_option
@click.option("--store", "store_url", default=None, help="Store URL; default: from grid.json.")
@click.option("--store-password-file", type=click.Path(path_type=Path), default=None,
              help="The store's password (default: $SPACEGRID_STORE_PASSWORD, else DATA_DIR/store.password), as the "
                   "PUs find it.")
@click.option("--map", "map_names", multiple=True, help="Only this map (repeatable); default: every persisted map.")
@click.option("--partition", "partitions", type=int, multiple=True, help="Only this partition (repeatable).")
@click.option("--repair", type=click.Choice(REPAIR_DIRECTIONS), default=None,
              help="Repair the drift: 'store' makes the store equal the grid, 'grid' the grid equal the store. "
                   "Without it, a dry run that only reports.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@connect_timeout_option
@access_options
def reconcile(data_dir: Path, nats_url: str | None, app: str | None, store_url: str | None,
              store_password_file: Path | None, map_names: tuple[str, ...], partitions: tuple[int, ...], repair: str | None, as_json: bool,
              connect_timeout_s: float) -> None:
    """Compare grid and store (per-partition digests, then key by key where they differ); exits 4 on drift left."""
    from spacegrid.store import open_store

    url, space = resolve(data_dir, nats_url, app)
    if store_url is None:
        store_url = read_running_grid_file(data_dir).get("store")
    if not store_url:
        raise ConfigError("no store to reconcile with: pass --store URL (the grid.json of this grid names none)")
    store_url = with_store_password(store_url, read_store_password(store_password_file, data_dir))
    maps = list(map_names) or [m.name for m in space.maps.values() if m.persistence != "none"]
    for name in maps:
        space.map_def(name)
    chosen = list(partitions) or list(range(space.partitions))
    err = Console(stderr=True)

    async def run() -> list[PartitionReport]:
        store = open_store(store_url, space.name, list(space.maps))
        await store.open()
        client = await open_client(space, url, connect_timeout_s, given_access(data_dir, "admin"))
        try:
            with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                          TimeElapsedColumn(), console=err, disable=as_json) as progress:
                task = progress.add_task("reconciling", total=len(chosen) * len(maps))
                return await run_reconcile(Reconciler(client, store), chosen, maps, repair,
                                           lambda report: progress.advance(task))
        finally:
            await client.close()
            await store.close()

    reports = asyncio.run(run())
    drifted = [report for report in reports if report.drift]
    if as_json:
        click.echo(json.dumps({"repair": repair, "reports": [report.to_json() for report in reports]}))
    else:
        out = Console()
        table = Table(title=f"space {space.name} against {store_url.split('@')[-1]}: "
                            f"{len(reports) - len(drifted)}/{len(reports)} partition maps agree"
                            + (f", repaired toward the {repair}" if repair else " (dry run)"))
        for column in ("partition", "map", "grid", "store", "pending", "drift", "examples"):
            table.add_column(column, justify="left" if column in ("map", "examples") else "right")
        for report in drifted or reports[:0]:
            examples = ", ".join(f"{d.key} (grid {_version(d.grid_version)}, store {_version(d.store_version)})"
                                 for d in report.drift[:3])
            table.add_row(str(report.partition), report.map, str(report.grid_entries), str(report.store_rows),
                          str(report.pending), str(len(report.drift)), examples)
        out.print(table)
        by_digest = sum(report.equal_by_digest for report in reports)
        out.print(f"{by_digest} equal by digest alone; {sum(len(r.drift) for r in reports)} keys drifted; "
                  f"{sum(r.pending for r in reports)} writes pending (write-behind lag, not drift)")
    if drifted and repair is None:
        sys.exit(4)


def _version(version: int | None) -> str:
    return "absent" if version is None else f"v{version}"
