"""Pytest fixtures users can reuse: a real nats-server on a free port and a real local grid, always shut down."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess  # nosec B404  # test fixtures: argv lists, no shell
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spacegrid.engine.server import NatsServerProcess, NatsServerSpec
from spacegrid.launcher import DEFAULT_APP, EMBEDDED_STORE, LocalGrid
from spacegrid.limits import DEFAULT_LIMITS, PU_STOP_KILL_GRACE_S


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServerProcess]:
    """A JetStream-enabled nats-server on a free loopback port, its store under tmp_path; stopped after the test."""
    server = NatsServerProcess(NatsServerSpec(store_dir=tmp_path / "nats", server_name="test"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServerProcess) -> Iterator[str]:
    """The client URL of the `nats_server` fixture, e.g. "nats://127.0.0.1:40123"."""
    yield nats_server.url


TEST_PU_ARGS = ["--handler-time-limit-s", "0.5"]


@pytest.fixture
def grid_factory(tmp_path: Path) -> Iterator[Callable[..., LocalGrid]]:
    """start(app=..., pus=N, store=URL) -> a ready LocalGrid (real nats-server, real PU processes, by default a
    SQLite store under its data dir); all stopped after the test."""
    grids: list[LocalGrid] = []

    def start(app: str = DEFAULT_APP, pus: int = 2, pu_args: list[str] | None = None, ready_timeout_s: float = 60.0,
              store: str = EMBEDDED_STORE) -> LocalGrid:
        grid = LocalGrid(tmp_path / f"grid{len(grids)}", app, pu_args=list(TEST_PU_ARGS if pu_args is None else pu_args),
                         store=store)
        grids.append(grid)
        grid.start(pus)
        grid.wait_ready(ready_timeout_s, members=pus)
        return grid

    try:
        yield start
    finally:
        for grid in grids:
            grid.stop()


@pytest.fixture
def pu_factory(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """start(nats_url, *args, app=..., env=None) -> a `spacegrid pu --nats URL --app APP *args` process (its output
    in tmp_path/pu-N.log, the path as `.log_path`); each is sent SIGTERM after the test and killed if still there."""
    started: list[subprocess.Popen[bytes]] = []

    def start(nats_url: str, *args: str, app: str = DEFAULT_APP,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log_path = tmp_path / f"pu-{len(started)}.log"
        with open(log_path, "ab") as log:
            pu = subprocess.Popen([sys.executable, "-m", "spacegrid.cli.main", "pu", "--nats", nats_url, "--app", app,  # nosec B603  # argv list (sys.executable), no shell
                                   *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  cwd=tmp_path, env=None if env is None else {**os.environ, **env})
        pu.log_path = log_path  # type: ignore[attr-defined]
        started.append(pu)
        return pu

    try:
        yield start
    finally:
        for pu in started:
            if pu.poll() is None:
                pu.send_signal(signal.SIGTERM)
        for pu in started:
            try:
                pu.wait(timeout=DEFAULT_LIMITS.pu_stop_timeout_s + PU_STOP_KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                pu.kill()
                pu.wait()


PG_DSN = os.environ.get("SPACEGRID_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_execute(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(PG_DSN, timeout=10)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A store URL for the local PostgreSQL, in a fresh schema of its own (dropped afterwards)."""
    schema = f"sgtest_{secrets.token_hex(4)}"
    _pg_execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_DSN}?search_path={schema}"
    finally:
        _pg_execute(f"DROP SCHEMA {schema} CASCADE")

