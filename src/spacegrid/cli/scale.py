"""`spacegrid scale N`: start or stop PUs of a grid that `spacegrid up` runs, and follow until it has settled."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from spacegrid.cli.common import (access_options, app_option, connect_timeout_option, console, data_dir_option, fail,
                                  given_access, read_running_grid_file, resolve)
from spacegrid.errors import SpacegridError

SCALE_POLL_S = 0.3  # the grid's status is read this often while it settles


@click.command()
@click.argument("pus", type=int)
@data_dir_option
@app_option
@click.option("--timeout-s", type=click.FloatRange(1, 3600), default=180.0, show_default=True,
              help="How long to follow the grid until it settles (the launcher carries on past it).")
@connect_timeout_option
@access_options
def scale(pus: int, data_dir: Path, app: str | None, timeout_s: float, connect_timeout_s: float) -> None:
    """Run PUS processing units: the grid's launcher (`spacegrid up` on --data-dir) starts new ones, which take their
    fair share of partitions by live migration (each becomes owner once its backup has caught up), or stops the
    newest ones one at a time, each handing its partitions off before it exits. Follows until every PU owns its
    fair share and every partition is served (a progress bar of partitions moving). For a grid on Kubernetes, scale
    its PU Deployment instead."""
    from spacegrid.inspect import read_status
    from spacegrid.scaling import check_pus, request_scale, settling

    try:
        check_pus(pus)
        grid = read_running_grid_file(data_dir)
    except SpacegridError as exc:
        fail(str(exc))
    if not isinstance(grid.get("launcher_pid"), int):
        fail(f"the grid at {data_dir} was not started by `spacegrid up`: scale its PUs where they run")
    url, space = resolve(data_dir, None, app)
    access = given_access(data_dir, "reader")
    request_scale(data_dir, pus)
    deadline_s = time.monotonic() + timeout_s
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task(f"scaling to {pus} PUs", total=space.partitions)
        while True:
            try:
                status = asyncio.run(read_status(url, space.name, space.partitions, connect_timeout_s, access))
            except SpacegridError as exc:
                fail(str(exc))
            state = settling(status, pus)
            progress.update(task, description=state.describe(),
                            completed=space.partitions - min(state.moving, space.partitions))
            if state.done:
                break
            if time.monotonic() > deadline_s:
                fail(f"the grid has not settled within {timeout_s:g} s ({state.describe()}); the launcher carries on: "
                     f"follow it "
                     f"with `spacegrid status` or `spacegrid events -f`")
            time.sleep(SCALE_POLL_S)
    console.print(f"[green]scaled[/green]: {pus} PU{'s' if pus != 1 else ''}, every partition served, each PU its fair "
                  "share")
