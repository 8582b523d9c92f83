"""The pytest plugin (entry point `spacegrid`): fixtures to test your own Space on a real grid, killed mid-test."""

# Loaded into every pytest run where spacegrid is installed: only `spacegrid_`-prefixed fixtures and options, no
# autouse fixture, and nothing heavy imported until a fixture is used. Disable it with `-p no:spacegrid`.

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from spacegrid.client.sync import SyncClient
    from spacegrid.engine.server import NatsServerProcess
    from spacegrid.limits import Limits
    from spacegrid.testing.grid import GridUnderTest
    from spacegrid.testing.recorder import History

GRIDS = pytest.StashKey[list["GridUnderTest"]]()  # the grids a test started, for its failure report
LOG_LINES_DEFAULT = 40
READY_TIMEOUT_S = 60.0


def pytest_addoption(parser: pytest.Parser) -> None:
    """The plugin's command-line options and ini keys, all prefixed with spacegrid."""
    group = parser.getgroup("spacegrid", "spacegrid: real grids for testing your own Space")
    group.addoption("--spacegrid-app", default=None, metavar="MODULE:SPACE",
                    help="the app spacegrid_grid() starts when not given one (ini: spacegrid_app)")
    group.addoption("--spacegrid-keep-logs", default=None, metavar="DIR",
                    help="copy each grid's PU logs to DIR/<test>/gridN after the test (ini: spacegrid_keep_logs)")
    parser.addini("spacegrid_app", "the app (MODULE:SPACE) spacegrid_grid() starts when not given one", default="")
    parser.addini("spacegrid_keep_logs", "copy each grid's PU logs to this directory after the test", default="")
    parser.addini("spacegrid_log_lines", "PU log lines per PU shown when a test that started a grid fails (0: none)",
                  default=str(LOG_LINES_DEFAULT))


def _setting(config: pytest.Config, name: str) -> str | None:
    """A setting from the command line, else the ini file, else None."""
    value = config.getoption(f"--{name.replace('_', '-')}") or config.getini(name)
    return str(value) if value else None


@pytest.fixture
def spacegrid_nats(tmp_path: Path) -> Iterator[NatsServerProcess]:
    """A bare JetStream nats-server (no TLS, no credentials) on a free loopback port, its store under tmp_path;
    `.url` is its client URL. Stopped, by its PID, after the test."""
    from spacegrid.engine.server import NatsServerProcess, NatsServerSpec

    server = NatsServerProcess(NatsServerSpec(store_dir=tmp_path / "nats", server_name="test"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def spacegrid_grid(request: pytest.FixtureRequest, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., GridUnderTest]]:
    """start(app="mymodule:space", pus=2, store="embedded", pu_args=(), ready_timeout_s=60) -> a GridUnderTest,
    ready: its own nats-server (TLS, a credential per role) and `pus` real PU processes under tmp_path/gridN,
    with a SQLite store there ("embedded"), none ("none") or a database URL. Every grid is stopped after the test
    (PUs and nats-server by PID); `app` defaults to --spacegrid-app / the spacegrid_app ini key."""
    from spacegrid.launcher import EMBEDDED_STORE, load_space
    from spacegrid.testing.grid import GridUnderTest

    grids: list[GridUnderTest] = []
    request.node.stash[GRIDS] = grids

    def start(app: str | None = None, pus: int = 2, store: str = EMBEDDED_STORE, pu_args: Sequence[str] = (),
              ready_timeout_s: float = READY_TIMEOUT_S) -> GridUnderTest:
        app = app or _setting(request.config, "spacegrid_app")
        if app is None:
            raise pytest.UsageError("spacegrid_grid() needs an app: spacegrid_grid(app='mymodule:space'), "
                                    "--spacegrid-app or the spacegrid_app ini key")
        load_space(app)  # a clear error here, in the test, if the app can't be imported
        _let_pus_import(app, monkeypatch)
        grid = GridUnderTest(tmp_path / f"grid{len(grids)}", app, pu_args=list(pu_args), store=store)
        grids.append(grid)
        grid.start(pus)
        grid.wait_ready(ready_timeout_s, members=pus)
        return grid

    try:
        yield start
    finally:
        keep = _setting(request.config, "spacegrid_keep_logs")
        for grid in grids:
            grid.stop()
        if keep is not None:
            _keep_logs(grids, Path(keep) / re.sub(r"[^\w.-]+", "_", request.node.nodeid))


@pytest.fixture
def spacegrid_client(spacegrid_grid: Callable[..., GridUnderTest]) -> Iterator[Callable[..., SyncClient]]:
    """connect(grid, limits=None) -> a SyncClient on `grid` with the client role's credential; each is closed
    after the test, before the grids stop. (From async code: `await Client.connect(grid.space, grid.url,
    access=grid.client_access)`.)"""
    from spacegrid.client.sync import SyncClient
    from spacegrid.limits import DEFAULT_LIMITS

    clients: list[SyncClient] = []

    def connect(grid: GridUnderTest, limits: Limits | None = None) -> SyncClient:
        client = SyncClient(grid.space, grid.url, limits or DEFAULT_LIMITS, access=grid.client_access)
        clients.append(client)
        return client

    try:
        yield connect
    finally:
        for client in clients:
            client.close()


@pytest.fixture
def spacegrid_history(tmp_path: Path) -> Iterator[History]:
    """A History recording this test's operations in tmp_path/history.jsonl; `.check(...)` runs the checkers."""
    from spacegrid.testing.recorder import History

    history = History(tmp_path / "history.jsonl")
    try:
        yield history
    finally:
        history.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that started grids gets a report section with each PU log's last lines."""
    report = yield
    grids = item.stash.get(GRIDS, None)
    lines = int(item.config.getini("spacegrid_log_lines") or 0)
    if grids and report.failed and lines > 0:
        report.sections.append(("spacegrid PU logs", _log_tails(grids, lines)))
    return report


def _let_pus_import(app: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Put the directory `app`'s module was imported from on the PUs' PYTHONPATH (for this test only), so that an
    app the test imports from its own folder imports in the PU processes too."""
    module = sys.modules[app.partition(":")[0]]
    if getattr(module, "__file__", None) is None:
        return
    path = Path(str(module.__file__)).resolve()
    depth = module.__name__.count(".") + (1 if path.name == "__init__.py" else 0)
    root = str(path.parents[depth])
    if "site-packages" in Path(root).parts:  # installed: the PUs find it as this process did
        return
    paths = [root, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root)]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))


def _log_tails(grids: list[GridUnderTest], lines: int) -> str:
    """The last `lines` lines of every PU log of `grids`, each under its path."""
    parts: list[str] = []
    for grid in grids:
        for pu in grid.pus:
            try:
                tail = pu.log_path.read_text(errors="replace").splitlines()[-lines:]
            except OSError as exc:
                tail = [f"(unreadable: {exc})"]
            state = "running" if pu.popen.returncode is None else f"exit {pu.popen.returncode}"
            parts += [f"--- {pu.log_path} (pid {pu.pid}, {state})", *tail]
    return "\n".join(parts)


def _keep_logs(grids: list[GridUnderTest], target: Path) -> None:
    """Copy each grid's logs directory to target/gridN."""
    for index, grid in enumerate(grids):
        logs = grid.data_dir / "logs"
        if logs.is_dir():
            shutil.copytree(logs, target / f"grid{index}", dirs_exist_ok=True)
