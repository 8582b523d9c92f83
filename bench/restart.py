"""Time to serve again after SIGKILL of every process of a grid, then `spacegrid up` on the same data dir.

    .venv/bin/python bench/restart.py [--keys 10000] [--runs 3] [--nats-cluster 3] [--pus 2] [--json out.json]

The grid is the default embedded one (`spacegrid up`, SQLite store under the data dir) with the test app. The first
start loads `--keys` keys. Each run then SIGKILLs the launcher, its nats-server(s) and its PUs at once (as a power
cut of the host would), starts `spacegrid up` again with the same arguments, and measures from that command's start
until a get of one key of every partition has succeeded (and, at the end, that every key reads back its value).
Phases are read off the new launcher's grid.json and the PUs' logs. Loopback only, bounded in time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from spacegrid.security.access import Access
from spacegrid.client.client import Client
from spacegrid.engine.connection import install_uvloop
from spacegrid.errors import SpacegridError
from spacegrid.launcher import GRID_FILE
from spacegrid.testing.apps import space

APP = "spacegrid.testing.apps:space"
START_TIMEOUT_S = 120.0
SERVE_TIMEOUT_S = 60.0
LOAD_CHUNK = 500

console = Console(stderr=True)


def up_command(data_dir: Path, pus: int, nats_cluster: int) -> list[str]:
    command = [sys.executable, "-m", "spacegrid.cli.main", "up", "--pus", str(pus), "--data-dir", str(data_dir),
               "--app", APP]
    return command + (["--nats-cluster", str(nats_cluster)] if nats_cluster else [])


def read_grid(data_dir: Path, launcher_pid: int, deadline_s: float) -> dict[str, Any]:
    """grid.json as written by the launcher with this pid (waits for it)."""
    path = data_dir / GRID_FILE
    while time.monotonic() < deadline_s:
        try:
            grid = dict(json.loads(path.read_text()))
            if grid.get("launcher_pid") == launcher_pid and grid.get("pus"):
                return grid
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    raise TimeoutError(f"no grid.json from launcher {launcher_pid} in time")


def sample_keys() -> list[str]:
    """One key of every partition of the test app's kv map."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < space.partitions:
        key = f"k{i}"
        found.setdefault(space.partition_of("kv", key), key)
        i += 1
    return [found[p] for p in range(space.partitions)]


async def load(url: str, keys: int) -> None:
    async with await Client.connect(space, url) as client:
        for start in range(0, keys, LOAD_CHUNK):
            await asyncio.gather(*(client.put("kv", f"k{i}", i) for i in range(start, min(keys, start + LOAD_CHUNK))))


async def wait_serving(url: str, keys: list[str], deadline_s: float) -> float:
    """Until one get per partition succeeds (each retried within the client's deadline); returns when."""
    while time.monotonic() < deadline_s:
        try:
            async with await Client.connect(space, url) as client:
                await asyncio.gather(*(client.get("kv", key, deadline_s=max(0.1, deadline_s - time.monotonic()))
                                       for key in keys))
                return time.monotonic()
        except SpacegridError:
            await asyncio.sleep(0.02)
    raise TimeoutError("the grid did not serve every partition in time")


async def check_all(url: str, keys: int) -> int:
    async with await Client.connect(space, url) as client:
        wrong = 0
        for start in range(0, keys, LOAD_CHUNK):
            names = [f"k{i}" for i in range(start, min(keys, start + LOAD_CHUNK))]
            values = await client.get_many("kv", names)
            wrong += sum(1 for name in names if values.get(name) != int(name[1:]))
        return wrong


def kill_everything(grid: dict[str, Any], launcher: subprocess.Popen[bytes]) -> None:
    pids = [launcher.pid, *grid.get("nats_pids", []), *grid.get("pus", [])]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    launcher.wait(timeout=10)
    deadline_s = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline_s:
        time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and " Z " not in Path(f"/proc/{pid}/stat").read_text()


def start(data_dir: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], float]:
    log = (data_dir.parent / "launcher.log").open("ab")
    started_s = time.monotonic()
    launcher = subprocess.Popen(up_command(data_dir, args.pus, args.nats_cluster), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    return launcher, started_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pus", type=int, default=2)
    parser.add_argument("--nats-cluster", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="copy the data dir (logs included) here at the end")
    args = parser.parse_args()
    install_uvloop()
    keys = sample_keys()
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="sg-restart-") as tmp:
        data_dir = Path(tmp) / "grid"
        launcher, started_s = start(data_dir, args)
        try:
            grid = read_grid(data_dir, launcher.pid, time.monotonic() + START_TIMEOUT_S)
            os.environ.update(Access.of_data_dir(data_dir, "client").environment())  # what Client.connect takes
            asyncio.run(wait_serving(grid["nats_url"], keys, time.monotonic() + START_TIMEOUT_S))
            console.print(f"loading {args.keys:,} keys")
            asyncio.run(load(grid["nats_url"], args.keys))
            for run in range(args.runs):
                kill_everything(grid, launcher)
                launcher, started_s = start(data_dir, args)
                grid = read_grid(data_dir, launcher.pid, started_s + START_TIMEOUT_S)
                grid_file_s = time.monotonic() - started_s
                served_s = asyncio.run(wait_serving(grid["nats_url"], keys, started_s + SERVE_TIMEOUT_S)) - started_s
                wrong = asyncio.run(check_all(grid["nats_url"], args.keys))
                runs.append({"run": run + 1, "grid_file_s": round(grid_file_s, 3), "serving_s": round(served_s, 3),
                             "wrong_values": wrong})
                console.print(f"run {run + 1}: serving after {served_s:.2f} s (grid.json after {grid_file_s:.2f} s), "
                              f"{wrong} wrong values")
        finally:
            launcher.send_signal(signal.SIGTERM)
            try:
                launcher.wait(timeout=30)
            except subprocess.TimeoutExpired:
                launcher.kill()
            if args.keep is not None:
                shutil.copytree(data_dir, args.keep, dirs_exist_ok=True)
    table = Table(title=f"restart after SIGKILL of every process: {args.keys:,} keys, {args.pus} PUs, "
                        f"{'3-node NATS cluster' if args.nats_cluster else 'one NATS node'}")
    for column in ("run", "grid.json written (s)", "serving every partition (s)", "wrong values"):
        table.add_column(column, justify="right")
    for row in runs:
        table.add_row(str(row["run"]), f"{row['grid_file_s']:.2f}", f"{row['serving_s']:.2f}", str(row["wrong_values"]))
    Console().print(table)
    serving = [row["serving_s"] for row in runs]
    print(f"serving: median {statistics.median(serving):.2f} s, max {max(serving):.2f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
