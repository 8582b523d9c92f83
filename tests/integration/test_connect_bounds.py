"""Connecting within a bound: Client.connect and the CLI fail fast, saying whether the grid is down (nothing
listens) or unreachable (no answer in time), and a grid.json left by a crashed launcher is reported as such."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spacegrid.engine.connection import connect
from spacegrid.engine.server import NatsServerProcess, free_port
from spacegrid.errors import GridUnavailable
from spacegrid.testing.apps import APP

SPACEGRID = [sys.executable, "-m", "spacegrid.cli.main"]
CLI_START_S = 5.0  # a CLI process's own start-up (imports) on a loaded 2-core machine


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A TCP port that accepts connections and never says anything (a paused or wedged server)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"nats://127.0.0.1:{listener.getsockname()[1]}"


def test_connect_to_nothing_fails_at_once_saying_the_grid_is_down() -> None:
    """Every server refusing the connection ends the first connect at once, not after its bound."""
    url = f"nats://127.0.0.1:{free_port()},nats://127.0.0.1:{free_port()}"
    started_s = time.monotonic()
    with pytest.raises(GridUnavailable, match="grid is down.*is the grid up"):
        asyncio.run(connect(url, "test", 30.0))
    assert time.monotonic() - started_s < 5.0


def test_connect_to_a_silent_server_gives_up_after_its_bound_saying_unreachable(silent_url: str) -> None:
    """A server that accepts but never answers makes the first connect fail after connect_timeout_s."""
    started_s = time.monotonic()
    with pytest.raises(GridUnavailable, match="unreachable"):
        asyncio.run(connect(silent_url, "test", 1.0))
    assert 1.0 <= time.monotonic() - started_s < 3.0


def test_connect_takes_the_reachable_server_of_a_list(nats_server: NatsServerProcess) -> None:
    """A URL list with one server down still connects to the one that is up (a node of a cluster lost)."""

    async def run() -> None:
        nc = await connect(f"nats://127.0.0.1:{free_port()},{nats_server.url}", "test", 5.0)
        try:
            assert nc.is_connected
        finally:
            await nc.close()

    asyncio.run(run())


def test_cli_commands_fail_within_their_connect_bound(tmp_path: Path, silent_url: str) -> None:
    """`spacegrid get` and `status` with --connect-timeout-s 1 against a silent server exit 1 within the bound
    (plus the CLI's start-up), saying NATS is unreachable; against nothing at all, that the grid is down."""
    for command in (["get", "events", "x"], ["status"]):
        started_s = time.monotonic()
        done = subprocess.run([*SPACEGRID, *command, "--nats", silent_url, "--app", APP, "--connect-timeout-s", "1",
                               "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 1 and "unreachable" in done.stderr, done.stderr
        assert time.monotonic() - started_s < 1 + 2 + CLI_START_S
    done = subprocess.run([*SPACEGRID, "status", "--nats", f"nats://127.0.0.1:{free_port()}", "--app", APP,
                           "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and "is the grid up?" in done.stderr, done.stderr


def test_cli_reports_a_grid_file_left_by_a_crashed_launcher(tmp_path: Path) -> None:
    """A grid.json whose launcher_pid is gone: the CLI says the grid is not running and how to start it, instead
    of trying its NATS URL."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "grid.json").write_text(json.dumps({"nats_url": f"nats://127.0.0.1:{free_port()}", "app": APP,
                                                    "launcher_pid": gone.pid, "pus": [], "nats_pids": []}))
    done = subprocess.run([*SPACEGRID, "get", "events", "x", "--data-dir", str(tmp_path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert f"its launcher (pid {gone.pid}) is gone" in done.stderr and "spacegrid up" in done.stderr
