"""One configuration for the grid (issue 9, item 6): `spacegrid up` and `spacegrid init` write it into the space's
KV, PUs started with only --nats and --app take the grid's store, limits and metrics from it, conflicting settings
are refused naming the setting, and a store password never reaches the KV, grid.json, logs or PU arguments."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spacegrid import config
from spacegrid.engine.server import NatsServerProcess
from spacegrid.engine.subjects import Names
from spacegrid.engine.transport import Transport
from spacegrid.security.access import ENV_CREDS, ENV_TLS_CA, Access
from spacegrid.testing.apps import APP
from spacegrid.testing.eventually import eventually_sync
from tests.integration.test_process_tree import start_up, stop_up, wait_grid_file

SPACEGRID = [sys.executable, "-m", "spacegrid.cli.main"]
SPACE = "testapp"
PASSWORD = "pw-Zq81-never-shown"


def use_credentials(monkeypatch: pytest.MonkeyPatch, access: Access) -> None:
    """Connections of this test (in-process and the commands it runs) take the grid's admin credential and CA
    from SPACEGRID_CREDS / SPACEGRID_TLS_CA, as an operator's shell would."""
    assert access.creds_path is not None and access.tls_ca_path is not None
    monkeypatch.setenv(ENV_CREDS, str(access.creds_path))
    monkeypatch.setenv(ENV_TLS_CA, str(access.tls_ca_path))


def sg(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SPACEGRID, *args], capture_output=True, text=True, timeout=timeout_s, check=False)


def stored_config(nats_url: str) -> config.GridConfig | None:
    return asyncio.run(config.show(nats_url, SPACE))


def raw_table_bucket(nats_url: str) -> bytes:
    """Every value in the space's table bucket, concatenated (the configuration's raw bytes among them)."""

    async def read() -> bytes:
        transport = await Transport.connect(nats_url, "test")
        try:
            coordination = await transport.coordination(Names(SPACE))
            values = [await coordination.table.get(key) for key in await coordination.table.keys()]
            return b"".join(entry.value or b"" for entry in values)
        finally:
            await transport.close()

    return asyncio.run(read())


def members(nats_url: str, count: int, timeout_s: float = 90) -> list[dict[str, Any]]:
    """The grid's members once exactly `count` are alive and every partition is active."""
    found: list[dict[str, Any]] = []

    def ready() -> None:
        done = sg("status", "--json", "--nats", nats_url, "--app", APP)
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        alive = [m for m in status["members"] if m["alive"]]
        assert status["ready"] and len(alive) == count, (status["ready"], [m["id"] for m in alive])
        assert all(m["partitions"] for m in alive), "a member owns nothing yet"
        found[:] = alive

    eventually_sync(ready, timeout_s=timeout_s, interval_s=0.2)
    return found


def write_keys(nats_url: str, count: int) -> None:
    from spacegrid.client.client import Client
    from spacegrid.testing.apps import space

    async def run() -> None:
        client = await Client.connect(space, nats_url)
        try:
            await asyncio.gather(*(client.put("kv", f"k{i}", {"i": i}) for i in range(count)))
        finally:
            await client.close()

    asyncio.run(run())


def assert_reconciled(*where: str) -> None:
    """`spacegrid reconcile` (dry run) finds no drift: exit 0, "0 keys drifted"."""

    def clean() -> None:
        done = sg("reconcile", "--json", *where)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    eventually_sync(clean, timeout_s=30, interval_s=0.5)


def test_a_pu_added_by_the_runbooks_command_takes_the_grids_store_and_serves_metrics(
        tmp_path: Path, pu_factory: Callable[..., subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    """`spacegrid up` writes the grid's configuration (the embedded store, default limits, metrics on); a PU added
    with only `spacegrid pu --nats URL --app M:S --creds $(spacegrid auth creds pu)` takes a share, persists its
    writes to the grid's store (reconcile finds no drift, its member record shows store rows) and has a metrics
    URL."""
    data_dir = tmp_path / "grid"
    up = start_up(data_dir, "--app", APP, "--pus", "2")
    try:
        grid = wait_grid_file(data_dir, pus=2, up=up)
        url = grid["nats_url"]
        use_credentials(monkeypatch, Access.of_data_dir(data_dir))
        stored = stored_config(url)
        assert stored is not None and stored.store == f"sqlite://{(data_dir / 'store.db').resolve()}"
        assert stored.written_by.startswith("spacegrid up") and stored.metrics and stored.lease_s == 0.6
        assert json.loads((data_dir / "config.json").read_text())["store"] == stored.store

        minted = sg("auth", "creds", "pu", "--data-dir", str(data_dir), "--app", APP)
        assert minted.returncode == 0, minted.stderr
        added = pu_factory(url, "--creds", minted.stdout.strip(), app=APP)
        joined = members(url, 3)
        write_keys(url, 200)
        assert_reconciled("--data-dir", str(data_dir))
        new = next(m for m in joined if m["pid"] == added.pid)
        assert new["metrics_url"] and new["metrics_url"].startswith("http://127.0.0.1:")

        def persisted() -> None:
            done = sg("status", "--json", "--data-dir", str(data_dir))
            mine = next((m for m in json.loads(done.stdout)["members"] if m["pid"] == added.pid), None)
            assert mine is not None, "the added PU is not (or, rejoining, not yet again) among the members"
            assert mine.get("store_available") is True and mine.get("store_rows", 0) > 0, mine

        eventually_sync(persisted, timeout_s=30, interval_s=0.2)
        assert "joining grid 'testapp'" in added.log_path.read_text()  # type: ignore[attr-defined]
    finally:
        stop_up(up)


def test_a_pu_given_a_conflicting_store_or_lease_is_refused_naming_the_setting(
        grid_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """On a grid with a store and the default lease, `spacegrid pu --store none` and `--lease-s 1.0` exit 1 at once
    with an error naming the setting, the grid's value and the given one; an agreeing explicit setting is fine."""
    grid = grid_factory(app=APP, pus=1)
    use_credentials(monkeypatch, grid.access)
    store = grid.store_url
    assert store is not None
    refused = sg("pu", "--nats", grid.url, "--app", APP, "--store", "none", timeout_s=30)
    assert refused.returncode == 1
    assert f"--store: the grid has {store}, this process was given none" in refused.stderr, refused.stderr
    refused = sg("pu", "--nats", grid.url, "--app", APP, "--lease-s", "1.0", "--heartbeat-timeout-s", "2",
                 timeout_s=30)
    assert refused.returncode == 1
    assert "--lease-s: the grid has 0.6, this process was given 1" in refused.stderr, refused.stderr
    assert "--heartbeat-timeout-s: the grid has 1.5, this process was given 2" in refused.stderr
    assert "spacegrid init --force" in refused.stderr
    assert len(grid.status().members) == 1  # neither joined


def test_init_then_bare_pus_form_a_grid_with_the_store_and_limits_from_the_config(
        tmp_path: Path, nats_server: NatsServerProcess, pu_factory: Callable[..., subprocess.Popen[bytes]]) -> None:
    """`spacegrid init` writes a production grid's configuration (store, a heartbeat timeout); two PUs started with
    only --nats and --app take both (their records show them, their writes reach the store). init again with the
    same values changes nothing; with another value it is refused naming it; --force replaces it, saying loudly
    that every PU must be restarted."""
    url = nats_server.url
    store = f"sqlite://{tmp_path / 'prod.db'}"
    init = ["init", "--nats", url, "--app", APP, "--store", store, "--heartbeat-timeout-s", "2", "--lease-s", "0.8"]
    done = sg(*init)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["store"] == store and "configuration written" in done.stderr

    for _ in range(2):
        pu_factory(url, app=APP)
    joined = members(url, 2)
    assert all(m.get("store_available") is True for m in joined), joined
    write_keys(url, 100)
    assert_reconciled("--nats", url, "--app", APP, "--store", store)
    records = asyncio.run(_member_records(url))
    assert {float(r["heartbeat_timeout_s"]) for r in records} == {2.0}

    again = sg(*init)
    assert again.returncode == 0 and "unchanged" in again.stderr, again.stderr
    other = sg(*init[:-2], "--lease-s", "1.0")
    assert other.returncode == 1 and "--lease-s: the grid has 0.8, this process was given 1" in other.stderr
    assert "--force" in other.stderr
    forced = sg(*init[:-2], "--lease-s", "1.0", "--force")
    assert forced.returncode == 0 and "restart EVERY PU" in forced.stderr, forced.stderr
    stored = stored_config(url)
    assert stored is not None and stored.lease_s == 1.0 and stored.written_by.startswith("spacegrid init")


async def _member_records(url: str) -> list[dict[str, Any]]:
    transport = await Transport.connect(url, "test")
    try:
        return list((await (await transport.coordination(Names(SPACE))).read_members()).values())
    finally:
        await transport.close()


def test_a_store_password_never_reaches_the_kv_grid_json_logs_or_pu_arguments(
        tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`spacegrid up --store postgresql://user:PASSWORD@...` keeps the password in DATA_DIR/store.password (0600)
    only: not in the KV (configuration and member records), grid.json, config.json, the logs, up's output or the
    PUs' command lines (/proc/PID/cmdline); the PUs still reach the store. `spacegrid init` with such a URL writes
    no password either and says to use the environment."""
    user, _, rest = pg_url.partition("://")[2].partition("@")
    with_password = f"postgresql://{user}:{PASSWORD}@{rest}"
    data_dir = tmp_path / "grid"
    up = start_up(data_dir, "--app", APP, "--pus", "2", "--store", with_password)
    try:
        grid = wait_grid_file(data_dir, pus=2, up=up)
        url = grid["nats_url"]
        use_credentials(monkeypatch, Access.of_data_dir(data_dir))
        joined = members(url, 2)
        assert all(m.get("store_available") is True for m in joined), joined
        password_file = data_dir / "store.password"
        assert password_file.read_text().strip() == PASSWORD
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        for pid in grid["pus"]:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            assert PASSWORD not in cmdline and "--store-password-file" in cmdline, cmdline
        stored = stored_config(url)
        assert stored is not None and stored.store == pg_url
        init = sg("init", "--nats", url, "--app", APP, "--store", with_password)
        assert init.returncode == 0 and "unchanged" in init.stderr and "SPACEGRID_STORE_PASSWORD" in init.stderr
        assert PASSWORD not in init.stdout + init.stderr
        assert PASSWORD.encode() not in raw_table_bucket(url)
        assert PASSWORD not in json.dumps(asyncio.run(_member_records(url)))
        texts = {path: path.read_text(errors="replace") for path in [data_dir / "grid.json", data_dir / "config.json",
                                                                     *(data_dir / "logs").glob("*")]}
    finally:
        stop_up(up)
    texts[Path(f"{data_dir}.up.log")] = Path(f"{data_dir}.up.log").read_text(errors="replace")
    assert [path for path, text in texts.items() if PASSWORD in text] == []


def test_the_first_bare_pu_writes_its_settings_as_the_grids_and_the_next_takes_them(
        tmp_path: Path, nats_server: NatsServerProcess, pu_factory: Callable[..., subprocess.Popen[bytes]]) -> None:
    """On a grid without a configuration, the first `spacegrid pu --store URL --heartbeat-timeout-s 2` writes its
    settings as the grid's (create-only); a second PU given only --nats and --app serves with that store and that
    heartbeat timeout."""
    url = nats_server.url
    store = f"sqlite://{tmp_path / 'bare.db'}"
    pu_factory(url, "--store", store, "--heartbeat-timeout-s", "2", app=APP)
    members(url, 1)
    stored = stored_config(url)
    assert stored is not None and stored.store == store and stored.heartbeat_timeout_s == 2.0
    assert stored.written_by.startswith("spacegrid pu")
    pu_factory(url, app=APP)
    joined = members(url, 2)
    assert all(m.get("store_available") is True for m in joined), joined
    assert {float(r["heartbeat_timeout_s"]) for r in asyncio.run(_member_records(url))} == {2.0}
