"""`spacegrid scale N` and `spacegrid roll`: start, stop or replace the PUs of a grid that `spacegrid up` runs, and
follow until it has settled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from spacegrid.cli.common import (access_options, app_option, connect_timeout_option, console, data_dir_option, fail,
                                  given_access, read_running_grid_file, resolve)
from spacegrid.errors import SpacegridError
from spacegrid.launcher import LocalGrid
from spacegrid.scaling import ROLL, check_pus, request_scale, settling

SCALE_POLL_S = 0.3  # the grid's status is read this often while it settles
timeout_option = click.option("--timeout-s", type=click.FloatRange(1, 3600), default=180.0, show_default=True,
                              help="How long to follow the grid until it settles (the launcher carries on past it).")


def _launcher_grid(data_dir: Path) -> dict[str, Any]:
    try:
        grid = read_running_grid_file(data_dir)
    except SpacegridError as exc:
        fail(str(exc))
    if not isinstance(grid.get("launcher_pid"), int):
        fail(f"the grid at {data_dir} was not started by `spacegrid up`: start or stop its PUs where they run "
             "(on Kubernetes: scale or restart its PU Deployment)")
    return grid


def _follow(data_dir: Path, app: str | None, pus: int, timeout_s: float, connect_timeout_s: float, title: str,
            progress_of: Callable[[Any], tuple[int, int, bool]]) -> None:
    """Until the grid has settled with `pus` PUs and `progress_of(settling)` says done: (completed, total, done)."""
    from spacegrid.inspect import read_status

    url, space = resolve(data_dir, None, app)
    access = given_access(data_dir, "reader")
    deadline_s = time.monotonic() + timeout_s
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task(title, total=space.partitions)
        while True:
            try:
                status = asyncio.run(read_status(url, space.name, space.partitions, connect_timeout_s, access))
            except SpacegridError as exc:
                fail(str(exc))
            state = settling(status, pus)
            completed, total, done = progress_of(state)
            progress.update(task, description=state.describe(), completed=completed, total=total)
            if state.done and done:
                return
            if time.monotonic() > deadline_s:
                fail(f"the grid has not settled within {timeout_s:g} s ({state.describe()}); the launcher carries on: "
                     "follow it with `spacegrid status` or `spacegrid events -f`")
            time.sleep(SCALE_POLL_S)


@click.command()
@click.argument("pus", type=int)
@data_dir_option
@app_option
@timeout_option
@connect_timeout_option
@access_options
def scale(pus: int, data_dir: Path, app: str | None, timeout_s: float, connect_timeout_s: float) -> None:
    """Run PUS processing units: the grid's launcher (`spacegrid up` on --data-dir) starts new ones, which take their
    fair share of partitions by live migration (each becomes owner once its backup has caught up), or stops the
    newest ones one at a time, each handing its partitions off before it exits. Follows until every PU owns its
    fair share and every partition is served (a progress bar of partitions moving)."""
    try:
        check_pus(pus)
    except SpacegridError as exc:
        fail(str(exc))
    _launcher_grid(data_dir)
    request_scale(data_dir, pus)
    _follow(data_dir, app, pus, timeout_s, connect_timeout_s, f"scaling to {pus} PUs",
            lambda state: (state.partitions - min(state.moving, state.partitions), state.partitions, True))
    console.print(f"[green]scaled[/green]: {pus} PU{'s' if pus != 1 else ''}, every partition served, each PU its fair "
                  "share")


@click.command()
@data_dir_option
@app_option
@timeout_option
@connect_timeout_option
@access_options
def roll(data_dir: Path, app: str | None, timeout_s: float, connect_timeout_s: float) -> None:
    """Replace every PU of the grid, one at a time (a rolling restart, e.g. to take a new version of the app): the
    launcher starts a new PU, waits until it took its fair share, stops the oldest gracefully (it hands its
    partitions off), and so on. Every partition stays served; clients retry what a move refuses."""
    before = set(_launcher_grid(data_dir).get("pus", []))
    if not before:
        fail(f"the grid at {data_dir} runs no PU to roll")
    request_scale(data_dir, ROLL)

    def replaced(_: Any) -> tuple[int, int, bool]:
        running = set(read_running_grid_file(data_dir).get("pus", []))
        left = len(before & running)
        return len(before) - left, len(before), left == 0

    _follow(data_dir, app, len(before), timeout_s, connect_timeout_s, f"rolling {len(before)} PUs", replaced)
    console.print(f"[green]rolled[/green]: {len(before)} PUs replaced, every partition served")


# ---- in the launcher (`spacegrid up`) ----------------------------------------------------------------------


def apply_scale_request(grid: LocalGrid, wanted: int | str) -> None:
    """What `spacegrid up` does with a request `scale` or `roll` left (blocking its loop until done)."""
    if wanted == ROLL:
        _roll(grid)
    else:
        _scale(grid, int(wanted))


def _scale(grid: LocalGrid, pus: int) -> None:
    """Start PUs up to `pus`, or stop the newest ones, one at a time, each gracefully: it hands its partitions off
    (live migration) before it exits, so no acknowledged write is lost and every partition stays served."""
    console.print(f"scaling from {len(grid.pus)} to {pus} PUs")
    while len(grid.pus) < pus:
        pu = grid.add_pu()
        console.print(f"  started PU {pu.index} (pid {pu.pid})")
    while len(grid.pus) > pus:
        pu = grid.pus[-1]
        console.print(f"  stopping PU {pu.index} (pid {pu.pid}): handing its partitions off")
        pu.stop(grid.pu_stop_timeout_s)
        grid.pus.remove(pu)
    grid.write_grid_file()


ROLL_SETTLE_S = 180.0  # `spacegrid roll`: how long one step may take to settle before rolling stops
ROLL_POLL_S = 0.3


def _roll(grid: LocalGrid) -> None:
    """Replace every PU, one at a time, as a Kubernetes rolling update does with maxSurge 1 and maxUnavailable 0: start
    a new PU, wait until the grid has settled (it took its fair share), stop the oldest gracefully (it hands its
    partitions off), wait again. Stops rolling, saying why, if the grid does not settle within ROLL_SETTLE_S."""
    count = len(grid.pus)
    console.print(f"rolling {count} PUs, one at a time")
    for old in list(grid.pus):
        new = grid.add_pu()
        grid.write_grid_file()
        if not _wait_settled(grid, count + 1, f"PU {new.index} (pid {new.pid}) to take its share"):
            return
        console.print(f"  PU {new.index} (pid {new.pid}) serves; stopping PU {old.index} (pid {old.pid})")
        old.stop(grid.pu_stop_timeout_s)
        grid.pus.remove(old)
        grid.write_grid_file()
        if not _wait_settled(grid, count, f"PU {old.index}'s partitions to move"):
            return
    console.print(f"rolled {count} PUs")


def _wait_settled(grid: LocalGrid, pus: int, what: str) -> bool:
    deadline_s = time.monotonic() + ROLL_SETTLE_S
    while time.monotonic() < deadline_s:
        try:
            if settling(grid.status(), pus).done:
                return True
        except SpacegridError as exc:
            console.print(f"  [yellow]status not read ({exc}); retrying[/yellow]")
        time.sleep(ROLL_POLL_S)
    console.print(f"[red]rolling stopped[/red]: waited {ROLL_SETTLE_S:g} s for {what}; see `spacegrid events`")
    return False
