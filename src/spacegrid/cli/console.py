"""`spacegrid console`: serve the web console of a running grid (read-only, with the reader credential)."""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess  # nosec B404  # Popen types and TimeoutExpired only; the console starts via lifeline.spawn
import sys
import time
from pathlib import Path

import click

from spacegrid.cli.common import (access_options, app_option, connect_timeout_option, console, data_dir_option,
                                  given_access, nats_option, open_transport, resolve, run_until_interrupted)
from spacegrid.errors import SpacegridError
from spacegrid.lifeline import spawn, stop_child

CONSOLE_START_S = 10.0  # the HTTP server binds within this, or the command fails
CONSOLE_STOP_S = 1.0  # open event streams get this long to close on shutdown
CONSOLE_URL_PREFIX = "console: "


def start_console(data_dir: Path, port: int) -> tuple[subprocess.Popen[bytes], str | None]:
    """`spacegrid up`'s console: `spacegrid console` as a child that dies with this process, its output in
    DATA_DIR/logs/console.log; returns it and its URL (None if it did not print one within CONSOLE_START_S)."""
    log_path = data_dir / "logs" / "console.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log_file:
        process = spawn([sys.executable, "-m", "spacegrid.cli.main", "console", "--data-dir", str(data_dir),
                         "--port", str(port)], stdout=log_file)
    deadline_s = time.monotonic() + CONSOLE_START_S
    while time.monotonic() < deadline_s and process.poll() is None:
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith(CONSOLE_URL_PREFIX):
                return process, line[len(CONSOLE_URL_PREFIX):].strip()
        time.sleep(0.05)
    return process, None


def stop_console(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL past CONSOLE_START_S (bounded)."""
    stop_child(process, CONSOLE_START_S)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it reaches beyond this machine
        return False


@click.command(name="console")
@data_dir_option
@nats_option
@app_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on. The console shows the grid's members, partitions and events to whoever "
                   "reaches it: keep it on loopback, or put it behind your own authenticating proxy.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="0: a free port.")
@connect_timeout_option
@access_options
def console_command(data_dir: Path, nats_url: str | None, app: str | None, host: str, port: int,
                    connect_timeout_s: float) -> None:
    """Serve the web console: the cluster map (each PU's partitions as primary and backup, epochs), live charts
    (throughput, latency percentiles, cache hit rate, replication and write-behind lag, dead letters) and the
    events timeline. Prints its URL, then serves until Ctrl-C."""
    import uvicorn

    from spacegrid.console.app import build_app
    from spacegrid.console.state import GridView
    from spacegrid.engine.subjects import Names

    url, space = resolve(data_dir, nats_url, app)
    access = given_access(data_dir, "reader")
    if not _loopback(host):
        console.print(f"[yellow]the console serves on {host}: anyone who reaches it sees the grid (read-only)[/yellow]")

    async def run() -> None:
        transport = await open_transport(url, "spacegrid-console", access, connect_timeout_s)
        try:
            names = Names(space.name)
            view = GridView(await transport.coordination(names), names, space.partitions)
            app = build_app(view, lambda since_s, follow, idle_s: transport.read_events(names, since_s, follow, idle_s))
            server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off",
                                                   timeout_graceful_shutdown=int(CONSOLE_STOP_S)))
            serving = asyncio.create_task(server.serve())
            deadline_s = time.monotonic() + CONSOLE_START_S
            while not server.started:
                if serving.done() or time.monotonic() > deadline_s:
                    raise SpacegridError(f"the console could not serve on {host}:{port}")
                await asyncio.sleep(0.05)
            bound = server.servers[0].sockets[0].getsockname()
            print(f"{CONSOLE_URL_PREFIX}http://{host}:{bound[1]}/", flush=True)
            await serving
        finally:
            await transport.close()

    run_until_interrupted(run(), failures=(ValueError,))
