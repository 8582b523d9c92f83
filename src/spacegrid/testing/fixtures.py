"""The fixture names of spacegrid's own suite (tests/conftest.py loads them): adapters over the plugin's, and more."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess  # nosec B404  # test fixtures: argv lists, no shell
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from spacegrid.engine.server import NatsServerProcess
from spacegrid.client.client import Client
from spacegrid.launcher import DEFAULT_APP, EMBEDDED_STORE, LocalGrid
from spacegrid.limits import DEFAULT_LIMITS, PU_STOP_KILL_GRACE_S
from spacegrid.testing.grid import GridUnderTest


@pytest.fixture
def nats_server(spacegrid_nats: NatsServerProcess) -> Iterator[NatsServerProcess]:
    """The plugin's `spacegrid_nats`: a bare JetStream nats-server on a free loopback port, stopped after the test."""
    yield spacegrid_nats


@pytest.fixture
def nats_url(spacegrid_nats: NatsServerProcess) -> Iterator[str]:
    """The client URL of the `nats_server` fixture, e.g. "nats://127.0.0.1:40123"."""
    yield spacegrid_nats.url


TEST_PU_ARGS = ["--handler-time-limit-s", "0.5"]


@pytest.fixture
def grid_factory(spacegrid_grid: Callable[..., GridUnderTest]) -> Iterator[Callable[..., GridUnderTest]]:
    """The plugin's `spacegrid_grid` with the suite's defaults: the ticket app, TEST_PU_ARGS."""

    def start(app: str = DEFAULT_APP, pus: int = 2, pu_args: list[str] | None = None, ready_timeout_s: float = 60.0,
              store: str = EMBEDDED_STORE) -> GridUnderTest:
        return spacegrid_grid(app, pus=pus, store=store, pu_args=TEST_PU_ARGS if pu_args is None else pu_args,
                              ready_timeout_s=ready_timeout_s)

    yield start


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


@contextmanager
def running_grid(directory: Path, app: str, pus: int = 2) -> Iterator[LocalGrid]:
    """A grid of `pus` PUs serving `app` (with TEST_PU_ARGS), ready; stopped on exit: for module-scoped fixtures."""
    grid = LocalGrid(directory, app, pu_args=TEST_PU_ARGS)
    grid.start(pus)
    try:
        grid.wait_ready(60, members=pus)
        yield grid
    finally:
        grid.stop()


def run_with_client(grid: LocalGrid, body: Callable[[Client], Awaitable[Any]], space: Any = None) -> Any:
    """`body(client)` in an event loop of its own, with a client of the grid (of `space` if given)."""
    async def main() -> Any:
        async with await Client.connect(space or grid.space, grid.url, access=grid.access) as client:
            return await body(client)

    return asyncio.run(main())
