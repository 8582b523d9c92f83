"""What deployments elsewhere (Kubernetes, Docker Compose, systemd; ADR 0011) take from `spacegrid auth`, run for
real: nats-servers configured from `spacegrid auth server-config`'s files, and from its Helm values as the NATS chart
renders them, accept the grid's credentials and refuse others; the compose demo's nats.conf is valid over them; and
a PU credential minted as a Kubernetes init container mints it (the account key in an environment variable, the pod
name as member id) serves, and serves again after its process is killed and restarted with the same credential, as
a container restart in the same pod does."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from spacegrid import Client
from spacegrid.engine.connection import connect
from spacegrid.engine.server import NatsServerProcess, NatsServerSpec, ServerSecurity, find_nats_server_binary
from spacegrid.errors import AccessDenied
from spacegrid.launcher import DEFAULT_APP, LocalGrid
from spacegrid.security.access import Access
from spacegrid.security.export import AUTH_CONF, HELM_VALUES, TLS_CONF
from spacegrid.security.secrets import SECRETS_DIR
from spacegrid.testing.eventually import eventually_sync

ROOT = Path(__file__).resolve().parents[2]
SPACEGRID = [sys.executable, "-m", "spacegrid.cli.main"]
SEED = re.compile(r"S[UAO][A-Z2-7]{56}")  # an nkey seed (user, account, operator)
ACCOUNT_KEY_ENV = "SPACEGRID_ACCOUNT_KEY"


def sg(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([*SPACEGRID, *args], capture_output=True, text=True, timeout=120,
                          env=None if env is None else {**os.environ, **env})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def export(keys: Path, out: Path, *hosts: str) -> None:
    sg("auth", "server-config", "--data-dir", str(keys), "--out", str(out), *(f"--tls-host={host}" for host in hosts))


def mint(keys: Path, role: str, out: Path) -> Path:
    return Path(sg("auth", "creds", role, "--data-dir", str(keys), "--app", DEFAULT_APP, "--out", str(out)).strip())


def include(path: Path, server_dir: Path) -> str:
    """An include line for `path` in a configuration in `server_dir`: nats-server reads include paths relative to
    the including file (an absolute one is joined to its directory, not taken as it is)."""
    return f"include {os.path.relpath(path, server_dir)}"


@pytest.fixture
def servers() -> Iterator[list[NatsServerProcess]]:
    started: list[NatsServerProcess] = []
    try:
        yield started
    finally:
        for server in started:
            server.stop()


async def connects(url: str, access: Access) -> None:
    """Connect with `access` and use JetStream (the grid account's): raises AccessDenied if NATS refuses it."""
    nc = await connect(url, "test-export", 5.0, access=access)
    try:
        await nc.jetstream(timeout=5.0).account_info()
    finally:
        await nc.close()


def assert_accepts_only_the_grid(url: str, grid: Access, other_grid: Access) -> None:
    asyncio.run(connects(url, grid))
    for refused in (Access(None, grid.tls_ca_path), other_grid):
        with pytest.raises(AccessDenied):
            asyncio.run(connects(url, refused))


def test_nats_servers_from_the_exported_files_and_helm_values_accept_the_grids_credentials_only(
        tmp_path: Path, servers: list[NatsServerProcess]) -> None:
    """A nats-server including OUT/auth.conf and OUT/tls.conf, and one whose configuration holds the Helm values'
    `config.merge` as the chart renders it (JSON), each take a connection with a client credential of the grid and
    use JetStream with it; they refuse a connection without a credential and one with another grid's credential.
    No file written holds a seed."""
    keys, out = tmp_path / "keys", tmp_path / "out"
    export(keys, out, "127.0.0.1", "localhost")
    for path in out.rglob("*"):
        assert not path.is_file() or not SEED.search(path.read_text()), f"{path} holds a seed"
    ca = out / "tls" / "ca.pem"
    admin, client = mint(keys, "admin", tmp_path / "admin.creds"), mint(keys, "client", tmp_path / "client.creds")
    export(tmp_path / "other-keys", tmp_path / "other-out")
    other = Access(mint(tmp_path / "other-keys", "client", tmp_path / "other.creds"), ca)

    from_files = tmp_path / "from-files"
    from_files.mkdir()
    lines = (include(out / AUTH_CONF, from_files), include(out / TLS_CONF, from_files))
    servers.append(NatsServerProcess(NatsServerSpec(store_dir=from_files, server_name="files",
                                                    security=ServerSecurity(lines, Access(admin, ca)))))
    servers[-1].start()
    assert_accepts_only_the_grid(servers[-1].url, Access(client, ca), other)

    helm = yaml.safe_load((out / HELM_VALUES).read_text())
    merge = helm["config"]["merge"]
    assert merge["resolver"] == "MEMORY" and len(merge["resolver_preload"]) == 2
    from_helm = tmp_path / "from-helm"
    from_helm.mkdir()
    rendered = tuple(f"{json.dumps(key)}: {json.dumps(value)}" for key, value in merge.items())
    servers.append(NatsServerProcess(NatsServerSpec(
        store_dir=from_helm, server_name="helm",
        security=ServerSecurity((*rendered, include(out / TLS_CONF, from_helm)), Access(admin, ca)))))
    servers[-1].start()
    assert_accepts_only_the_grid(servers[-1].url, Access(client, ca), other)


def test_the_compose_nats_config_is_valid_over_the_exported_files(tmp_path: Path) -> None:
    """deploy/compose/nats.conf, beside the `server` directory `spacegrid auth server-config` fills as the compose
    demo's `secrets` service runs it, passes `nats-server -t` (which also loads the TLS files it includes); without
    those files it does not."""
    grid = tmp_path / "grid"
    grid.mkdir()
    shutil.copy(ROOT / "deploy" / "compose" / "nats.conf", grid / "nats.conf")

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(find_nats_server_binary()), "-t", "-c", str(grid / "nats.conf")],
                              capture_output=True, text=True, timeout=60, env={**os.environ, "NATS_NAME": "nats1"})

    assert check().returncode != 0
    export(tmp_path / "keys", grid / "server", "nats1", "nats2", "nats3")
    done = check()
    assert done.returncode == 0, done.stderr


def pu_owns_partitions(grid: LocalGrid, member: str, pid: int) -> None:
    status = grid.status()
    info = status.members.get(member)
    assert info is not None and info.get("pid") == pid and status.alive(member), f"{member} (pid {pid}) not a member"
    assert info.get("active") and status.ready, f"{member} serves no partition yet, or the grid is not ready"


def test_a_pod_credential_minted_from_the_account_key_in_the_environment_serves_and_survives_a_restart(
        tmp_path: Path, grid_factory: Callable[..., LocalGrid],
        pu_factory: Callable[..., subprocess.Popen[bytes]]) -> None:
    """As deploy/kubernetes/pu/deployment.yaml runs it: `spacegrid auth creds pu --account-key-env VAR --member-id
    POD --out FILE` (no data dir) mints a credential with which `spacegrid pu --wait-for-config` joins the grid as
    member POD and takes a share; after a SIGKILL, the same credential (a container restarted in the same pod) joins
    again as POD (it removes the silent record of the first process if the grid has not yet), and every acknowledged
    write is still there; a third process with the same credential while the second lives exits, naming the
    conflict, and the second serves on."""
    grid = grid_factory(pus=1)
    assert grid.secrets is not None
    seed = (grid.secrets.directory / "account.nk").read_text().strip()
    creds = tmp_path / "pod" / "pu.creds"
    with pytest.raises(AssertionError, match="--app"):
        sg("auth", "creds", "pu", "--account-key-env", ACCOUNT_KEY_ENV, "--out", str(creds),
           env={ACCOUNT_KEY_ENV: seed})
    sg("auth", "creds", "pu", "--app", grid.app, "--member-id", "spacegrid-pu-abc12", "--account-key-env",
       ACCOUNT_KEY_ENV, "--out", str(creds), env={ACCOUNT_KEY_ENV: seed})
    assert not (tmp_path / SECRETS_DIR).exists() and oct(creds.stat().st_mode)[-3:] == "600"
    args = ("--creds", str(creds), "--tls-ca", str(grid.client_access.tls_ca_path), "--wait-for-config")

    first = pu_factory(grid.url, *args, app=grid.app)
    eventually_sync(lambda: pu_owns_partitions(grid, "spacegrid-pu-abc12", first.pid), timeout_s=60, interval_s=0.2)

    async def write(count: int) -> None:
        async with await Client.connect(grid.space, grid.url, access=grid.client_access) as client:
            for i in range(count):
                await client.put("events", f"k{i}", {"i": i})

    async def read(count: int) -> dict[str, object]:
        async with await Client.connect(grid.space, grid.url, access=grid.client_access) as client:
            return await client.get_many("events", [f"k{i}" for i in range(count)])

    asyncio.run(write(64))
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    again = pu_factory(grid.url, *args, app=grid.app)
    eventually_sync(lambda: pu_owns_partitions(grid, "spacegrid-pu-abc12", again.pid), timeout_s=60, interval_s=0.2)
    assert asyncio.run(read(64)) == {f"k{i}": {"i": i} for i in range(64)}
    assert again.poll() is None
    twin = pu_factory(grid.url, *args, app=grid.app)
    assert twin.wait(timeout=60) != 0
    assert "two PUs can't share one member id" in twin.log_path.read_text()  # type: ignore[attr-defined]
    assert again.poll() is None
    pu_owns_partitions(grid, "spacegrid-pu-abc12", again.pid)
