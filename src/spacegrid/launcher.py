"""A local grid: the embedded nats-server and N PU processes under one data dir, found again through DIR/grid.json.

The grid holds the data dir's lock (spacegrid.datadir) from start() to stop(); its children die with it, however
it dies (spacegrid.lifeline); stop() returns within stop_timeout_s, killing what did not stop by itself in time."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import subprocess  # nosec B404  # types and TimeoutExpired only; children start via lifeline.spawn
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from spacegrid.config import (NO_STORE, STORE_PASSWORD_FILE, GridConfig, conflicts, durability_of,
                              normalize_store_url, open_coordination, refusal, settle, split_grid_args,
                              split_store_password, write_store_password, written_by)
from spacegrid.datadir import DataDirLock
from spacegrid.engine.server import NatsServerProcess, NatsServerSpec, ServerSecurity, start_cluster, stop_all
from spacegrid.errors import ConfigError, GridUnavailable
from spacegrid.inspect import GridStatus, read_status
from spacegrid.lifeline import Lifeline, spawn
from spacegrid.limits import GRID_STOP_NATS_RESERVE_S_MAX, GRID_STOP_TIMEOUT_S, GRID_STOP_TIMEOUT_S_MIN, PU_STOP_MARGIN_S
from spacegrid.security.access import Access
from spacegrid.security.secrets import TLS_DIR, GridSecrets, new_member_id, secure_directory
from spacegrid.security.tls import issue_certificate
from spacegrid.security.tls import server_config as tls_config
from spacegrid.space import Space

GRID_FILE = "grid.json"
DEFAULT_APP = "spacegrid.examples.tickets:space"
EMBEDDED_STORE = "embedded"  # a SQLite file under the data dir
CONFIG_MIRROR = "config.json"  # the grid's configuration as last read (no password): `up` finds its app again


def load_space(app: str) -> Space:
    """Import `module:attribute` and return the Space it names."""
    module_name, _, attribute = app.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"--app takes MODULE:SPACE, e.g. {DEFAULT_APP}, not {app!r}")
    try:
        module = __import__(module_name, fromlist=[attribute])
    except ImportError as exc:
        raise ConfigError(f"can't import {module_name!r} for --app: {exc}") from exc
    space = getattr(module, attribute, None)
    if not isinstance(space, Space):
        raise ConfigError(f"{app} is not a spacegrid Space")
    return space


def last_app(data_dir: Path) -> str | None:
    """The app of the grid that last ran on this data dir (its config.json), if any."""
    try:
        return str(json.loads((data_dir / CONFIG_MIRROR).read_text())["app"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_grid_file(data_dir: Path) -> dict[str, Any]:
    path = data_dir / GRID_FILE
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise GridUnavailable(f"no grid at {data_dir} ({path} is missing): start one with `spacegrid up "
                              f"--data-dir {data_dir}` or pass --nats URL") from None


@dataclass
class PuProcess:
    """One PU OS process started by this launcher; stopped only by its PID."""

    index: int
    popen: subprocess.Popen[bytes]
    log_path: Path
    wrapper: tuple[str, ...] = ()  # the command it runs under, e.g. `ip netns exec NAME` (its replacement too)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: signal.Signals) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout_s: float = GRID_STOP_TIMEOUT_S) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        self.wait_or_kill(time.monotonic() + timeout_s)

    def wait_or_kill(self, deadline_s: float) -> None:
        """Reap it by `deadline_s` (time.monotonic()); SIGKILL it then if it still runs."""
        try:
            self.popen.wait(timeout=max(0.0, deadline_s - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass
class LocalGrid:
    """Start with start(), wait with wait_ready(), stop with stop(). Tests, `spacegrid up` and bench share it."""

    data_dir: Path
    app: str = DEFAULT_APP
    nats_url: str | None = None
    nats_port: int | None = None
    pu_args: list[str] = field(default_factory=list)
    nats_cluster: int = 0  # 0: one embedded node; 3: a local 3-node cluster, streams and KV with 3 replicas
    store: str | None = None  # a store URL, "embedded" (SQLite under data_dir) or "none"; None: the grid's (a new
    # grid's: embedded). A password in the URL goes to DATA_DIR/store.password (0600), never to the KV or grid.json.
    sync_interval: str | None = None  # the embedded nats-server's fsync policy ("always", "2m"); None: its default
    nats_host: str = "127.0.0.1"  # the address the embedded nats-server(s) listen on
    stop_timeout_s: float = GRID_STOP_TIMEOUT_S  # stop() returns within this, PU hand-off and store drain included
    secure: bool = True  # an embedded NATS requires credentials, each role its own (ADR 0010); False: `--insecure`
    access: Access | None = None  # this launcher's credential: given for an external NATS; an embedded grid's admin
    nats_nodes: list[NatsServerProcess] = field(default_factory=list)
    pus: list[PuProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.nats_cluster not in (0, 1, 3, 5):
            raise ConfigError(f"--nats-cluster takes 3 or 5 nodes (a quorum needs an odd count), not {self.nats_cluster}")
        if not self.secure and not _loopback(self.nats_host):
            raise ConfigError(f"refusing to listen on {self.nats_host} without authentication and TLS: anyone who "
                              f"reaches it could read and change every value; drop --insecure (the grid then "
                              f"requires TLS and its credentials), or listen on 127.0.0.1")
        if self.stop_timeout_s < GRID_STOP_TIMEOUT_S_MIN:
            raise ConfigError(f"--stop-timeout-s must be at least {GRID_STOP_TIMEOUT_S_MIN:g}, not {self.stop_timeout_s:g}")
        self._lock: DataDirLock | None = None
        self._lifeline: Lifeline | None = None
        self.space = load_space(self.app)
        secure_directory(self.data_dir)  # every value and every secret is in there: 0700
        self.secrets: GridSecrets | None = None
        self._given_store, self._store_password = ((None, None) if self.store is None
                                                   else split_store_password(self._embedded(self.store)))
        self.store = None if self.store is None else split_store_password(self.store)[0]  # the password: start()
        self._grid_settings, self._pu_args = split_grid_args(self.pu_args)
        self.config: GridConfig | None = None  # the grid's configuration, once start() has read or written it
        self._next_index = 0

    def _embedded(self, store: str) -> str:
        if store == EMBEDDED_STORE:
            return f"sqlite://{(self.data_dir / 'store.db').resolve()}"
        return normalize_store_url(store)

    @property
    def url(self) -> str:
        assert self.nats_url is not None, "start() first"
        return self.nats_url

    @property
    def nats(self) -> NatsServerProcess | None:
        """The embedded single node, if this grid runs one."""
        return self.nats_nodes[0] if len(self.nats_nodes) == 1 else None

    @property
    def replicas(self) -> int:
        return 3 if len(self.nats_nodes) >= 3 or self.nats_cluster >= 3 else 1

    @property
    def nats_stop_reserve_s(self) -> float:
        """Of the stop bound, what is kept for stopping nats-server after the PUs."""
        return min(GRID_STOP_NATS_RESERVE_S_MAX, self.stop_timeout_s / 5)

    @property
    def pu_stop_timeout_s(self) -> float:
        """The stop bound each PU gets: it finishes (or gives up) before the launcher would kill it."""
        return self.stop_timeout_s - self.nats_stop_reserve_s - PU_STOP_MARGIN_S

    def start(self, pus: int) -> None:
        """Lock the data dir (ConfigError naming the holder if another process has it), start NATS and `pus` PUs."""
        if self._lock is None:
            self._lock = DataDirLock.acquire(self.data_dir, "spacegrid up")
            self._lifeline = Lifeline()
            self._check_mirror()
            if self._store_password is not None:
                write_store_password(self.data_dir, self._store_password)
                self._store_password = None
        if self.nats_url is None:
            security = self._secure_embedded()
            if self.nats_cluster >= 3:
                self.nats_nodes = start_cluster(self.data_dir / "nats", self.nats_cluster, host=self.nats_host,
                                                sync_interval=self.sync_interval, wait_for_jetstream=False,
                                                security=security)
            else:
                node = NatsServerProcess(NatsServerSpec(store_dir=self.data_dir / "nats", port=self.nats_port,
                                                        host=self.nats_host, sync_interval=self.sync_interval,
                                                        security=security))
                node.start()
                self.nats_nodes = [node]
            self.nats_url = ",".join(node.url for node in self.nats_nodes)
        if self.access is None:  # an external NATS: the credential given to this process
            self.access = Access.from_env()
        for _ in range(pus):  # they wait for the grid's configuration, written or checked meanwhile
            self.add_pu()
        if self.config is None:
            self.write_config()
        self.write_grid_file()

    def _secure_embedded(self) -> ServerSecurity | None:
        """The embedded NATS's keys and the role credentials (made on the first start, kept after), or None for an
        insecure grid."""
        if not self.secure:
            self.access = Access()
            return None
        self.secrets = GridSecrets.ensure(self.data_dir, self.space.name)
        hosts = tuple(dict.fromkeys((self.nats_host, "127.0.0.1", "localhost")))
        certificate = issue_certificate(self.secrets.directory / TLS_DIR, "nats-server", server=True, hosts=hosts)
        self.access = Access(self.secrets.role_creds("admin"), certificate.ca_path)
        for role in ("client", "reader"):
            self.secrets.role_creds(role)
        client_tls, route_tls = tls_config(certificate, routes=self.nats_cluster >= 3)
        return ServerSecurity((*self.secrets.server_config(), *client_tls), self.access, tuple(route_tls))

    @property
    def client_access(self) -> Access:
        """The credential of the client role (admin where the grid has no roles of its own)."""
        if self.secrets is not None:
            return Access(self.secrets.role_creds("client")).over(self.access or Access())
        return self.access or Access()

    def _given(self) -> dict[str, Any]:
        """This start's explicit grid settings."""
        given: dict[str, Any] = {"app": self.app, "replicas": self.replicas, **self._grid_settings}
        if self._given_store is not None:
            given["store"] = self._given_store
        if self.nats_url is None or self.nats_nodes:  # an embedded nats-server: its durability is known
            given["durability"] = durability_of(self.sync_interval)
        return given

    def _check_mirror(self) -> None:
        """On a restart of an embedded grid (DATA_DIR/config.json left by its last run), refuse conflicting settings
        before starting anything; the grid's KV decides in the end."""
        path = self.data_dir / CONFIG_MIRROR
        if self.nats_url is not None or not path.exists():
            return
        try:
            last = GridConfig.from_wire(json.loads(path.read_text()))
        except (ValueError, ConfigError):
            return
        self._refuse_conflicts(last)

    def _refuse_conflicts(self, grid: GridConfig) -> None:
        found = conflicts(grid, self._given())
        if found:
            raise refusal(found, grid, "spacegrid up", f"Start it without those options to keep the grid's settings "
                          f"(`spacegrid up --data-dir {self.data_dir}`), or give a new --data-dir for a new grid.")

    def write_config(self) -> None:
        """Write the grid's configuration to KV if it has none (as start() does; again after NATS was replaced by
        an empty one: a cold start over the store), else check that this grid's settings agree with it."""
        self.config = asyncio.run(self._settle_config())
        (self.data_dir / CONFIG_MIRROR).write_text(json.dumps(self.config.to_wire(), indent=2) + "\n")

    async def _settle_config(self) -> GridConfig:
        """Write the grid's configuration if it has none; else check that this start's settings agree with it."""
        given = self._given()
        proposed = GridConfig(space=self.space.name, partitions=self.space.partitions,
                              written_by=written_by("spacegrid up"), **{"store": self._embedded(EMBEDDED_STORE), **given})
        transport, coordination = await open_coordination(self.url, self.space.name, self.replicas,
                                                          proposed.heartbeat_timeout_s, access=self.access)
        try:
            grid, _ = await settle(coordination, proposed)
        finally:
            await transport.close()
        self._refuse_conflicts(grid)
        return grid

    def add_pu(self, wrapper: tuple[str, ...] = ()) -> PuProcess:
        """Start one more PU; `wrapper` prefixes its command (it must exec the PU, so that the PID is the PU's)."""
        index = self._next_index
        self._next_index += 1
        log_dir = self.data_dir / "logs"
        log_dir.mkdir(exist_ok=True)
        log_path = log_dir / f"pu-{index}.log"
        assert self._lifeline is not None, "start() first"
        password_file = self.data_dir / STORE_PASSWORD_FILE
        password_args = ["--store-password-file", str(password_file.resolve())] if password_file.exists() else []
        password_args += self._pu_access_args(index)
        # store, limits and replicas come from the grid's configuration; a PU's own options only
        command = [*wrapper, sys.executable, "-m", "spacegrid.cli.main", "pu", "--app", self.app, "--nats", self.url,
                   "--wait-for-config", "--metrics-port", "0", "--stop-timeout-s", f"{self.pu_stop_timeout_s:g}", *password_args,
                   *self._pu_args]
        with open(log_path, "ab") as log_file:
            popen = spawn(command, stdout=log_file, lifeline=self._lifeline)
        pu = PuProcess(index, popen, log_path, wrapper)
        self.pus.append(pu)
        return pu

    def _pu_access_args(self, index: int) -> list[str]:
        """A PU's own credential (a new member, minted now), or the launcher's for an external NATS."""
        access = self.access or Access()
        if self.secrets is not None:
            access = access.with_creds(self.secrets.pu_creds(new_member_id(f"{os.getpid()}u{index}")))
        return access.arguments()

    @property
    def store_url(self) -> str | None:
        """The grid's store URL, without password (after start(): the grid's configuration's)."""
        if self.config is not None:
            return self.config.store_url
        store = self._given_store or self._embedded(EMBEDDED_STORE)
        return None if store == NO_STORE else store

    def write_grid_file(self) -> None:
        assert self._lock is not None, "only the grid holding the data dir's lock writes its grid.json"
        record = {"nats_url": self.url, "app": self.app, "space": self.space.name, "store": self.store_url,
                  "nats_pids": [node.pid for node in self.nats_nodes if node.is_running()],
                  "pus": [pu.pid for pu in self.pus if pu.alive()], "launcher_pid": os.getpid(),
                  "auth": "credentials" if self.secrets is not None else "none"}
        (self.data_dir / GRID_FILE).write_text(json.dumps(record, indent=2) + "\n")

    def status(self) -> GridStatus:
        return asyncio.run(read_status(self.url, self.space.name, self.space.partitions, access=self.access))

    def crash_and_restart_pus(self, timeout_s: float = 60.0) -> None:
        """SIGKILL every PU (a crash of all of them at once), start as many new ones and wait until they serve."""
        count = len(self.pus)
        for pu in self.pus:
            pu.kill()
        self.pus.clear()
        for _ in range(count):
            self.add_pu()
        self.wait_ready(timeout_s, members=count)

    def wait_ready(self, timeout_s: float = 60.0, on_progress: Callable[[GridStatus], None] | None = None,
                   members: int | None = None) -> GridStatus:
        """Until every partition is active on an owner this launcher runs (and, if given, exactly `members` are in
        the table)."""
        deadline = time.monotonic() + timeout_s
        last_error = "no status read yet"
        while time.monotonic() < deadline:
            for pu in self.pus:
                if pu.popen.poll() not in (None, -signal.SIGKILL, -signal.SIGTERM, 0):
                    raise ConfigError(f"PU {pu.index} exited with {pu.popen.returncode}; see {pu.log_path}")
            try:
                status = self.status()
            except Exception as exc:  # the buckets may not exist before the first PU starts
                last_error = str(exc)
            else:
                if on_progress is not None:
                    on_progress(status)
                owners = {owner for owner in status.table.owners if owner is not None}
                live_pids = {pu.pid for pu in self.pus if pu.alive()}
                # after a kill, the dead PUs' last records may still say "all active": only owners this launcher
                # runs count (their pid among its live PUs', on this host)
                ours = all(status.members.get(owner, {}).get("pid") in live_pids for owner in owners)
                if status.ready and ours and (members is None or len(owners) == members):
                    return status
                last_error = f"{status.active_partitions}/{status.table.partition_count} partitions active"
            time.sleep(0.1)
        raise GridUnavailable(f"grid not ready within {timeout_s}s: {last_error}; see logs in {self.data_dir / 'logs'}")

    def stop(self) -> None:
        """Stop within stop_timeout_s: SIGTERM to every PU (each hands off and drains its store within its own
        bound), SIGKILL to those still running when the nats-server's reserve begins, then nats-server (SIGTERM,
        SIGKILL at the bound). Then grid.json goes and the data dir is unlocked; idempotent. A grid that never got
        the lock (another process holds it) touches nothing there."""
        deadline_s = time.monotonic() + self.stop_timeout_s
        try:
            for pu in self.pus:
                pu.signal(signal.SIGCONT)
                pu.signal(signal.SIGTERM)
            for pu in self.pus:
                pu.wait_or_kill(deadline_s - self.nats_stop_reserve_s)
            stop_all(self.nats_nodes, max(0.1, deadline_s - time.monotonic()))
        finally:
            self.kill()  # whatever is left, if stopping failed half-way
            if self._lock is not None:
                (self.data_dir / GRID_FILE).unlink(missing_ok=True)
                self._lock.release()
                self._lock = None
            if self._lifeline is not None:
                self._lifeline.close()
                self._lifeline = None

    def kill(self) -> None:
        """SIGKILL every process of this grid still running (by PID) and reap it; the data dir stays locked."""
        for pu in self.pus:
            if pu.alive():
                pu.kill()
        for node in self.nats_nodes:
            node.kill()

    def __enter__(self) -> LocalGrid:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
