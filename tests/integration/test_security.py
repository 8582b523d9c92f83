"""Security by default (issue 11, ADR 0010): a grid from LocalGrid (as `spacegrid up` starts it) refuses
anonymous connections, and each role's NATS permissions deny the attacks of the security audit. Every attack runs
against a real nats-server; afterwards the grid's data is checked unchanged."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import pytest
from nats.js.errors import NotFoundError

from spacegrid import Client, codec
from spacegrid.core.logformat import encode_pu_message
from spacegrid.engine.connection import nats_options
from spacegrid.engine.subjects import Names
from spacegrid.errors import AccessDenied
from spacegrid.launcher import GRID_FILE, LocalGrid
from spacegrid.security.access import Access
from spacegrid.security.secrets import SECRETS_DIR, GridSecrets
from spacegrid.testing.apps import APP, space

NAMES = Names(space.name)
DENIAL_WAIT_S = 5.0
SEED = re.compile(r"S[UAO][A-Z2-7]{56}")  # an nkey seed (user, account, operator)
KEYS = {f"secure-{i}": {"n": i, "card": "4111-1111"} for i in range(8)}


async def _write_keys(grid: LocalGrid) -> None:
    async with await Client.connect(space, grid.url, access=grid.client_access) as client:
        for key, value in KEYS.items():
            await client.put("kv", key, value)


async def _read_keys(grid: LocalGrid) -> dict[str, Any]:
    async with await Client.connect(space, grid.url, access=grid.client_access) as client:
        return await client.get_many("kv", list(KEYS))


async def _denied(access: Access, url: str, attack: Callable[[Any], Awaitable[Any]]) -> str:
    """Run `attack` on a raw connection with `access`; return the permissions violation NATS reported for it."""
    errors: asyncio.Queue[str] = asyncio.Queue()

    async def on_error(exc: Exception) -> None:
        errors.put_nowait(str(exc))

    nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False, **nats_options(access))
    try:
        try:
            await attack(nc)
        except Exception as exc:  # a denied JetStream API request gets no answer: the violation is what counts
            errors.put_nowait(f"(attack raised {exc!r})")
        while True:
            text = await asyncio.wait_for(errors.get(), DENIAL_WAIT_S)
            if "permissions violation" in text.lower():
                return text
    finally:
        await nc.close()


def _forged_log_message() -> bytes:
    partition = space.partition_of("kv", "secure-0")
    record = codec.encode([[1, "kv", "secure-0", codec.encode("forged"), 99, "forged-op"]])
    return encode_pu_message([(partition, record)])


@pytest.fixture
def secure_grid(grid_factory: Callable[..., LocalGrid]) -> LocalGrid:
    grid = grid_factory(app=APP, pus=2)
    assert grid.secrets is not None, "LocalGrid is secure by default"
    asyncio.run(_write_keys(grid))
    return grid


def test_a_connection_without_credentials_is_refused_at_once(secure_grid: LocalGrid) -> None:
    """Without the grid's CA, without credentials or with another grid's: AccessDenied within the connect bound,
    saying what to pass; a plain raw connection is refused too (no retry storm: the client gives up at the first
    refusal)."""
    grid = secure_grid

    ca = grid.client_access.tls_ca_path

    async def anonymous(access: Access) -> None:
        await Client.connect(space, grid.url, access=access)

    with pytest.raises(AccessDenied, match="--tls-ca"):  # TLS first: the server's certificate is the grid's CA's
        asyncio.run(asyncio.wait_for(anonymous(Access()), 10.0))
    with pytest.raises(AccessDenied, match="--creds"):
        asyncio.run(asyncio.wait_for(anonymous(Access(None, ca)), 10.0))

    other_dir = grid.data_dir.parent / "other-grid"
    other = Access(GridSecrets.ensure(other_dir, space.name).role_creds("admin"), ca)

    async def foreign() -> None:
        await Client.connect(space, grid.url, access=other)

    with pytest.raises(AccessDenied, match="not this grid's"):
        asyncio.run(asyncio.wait_for(foreign(), 10.0))

    async def raw() -> None:
        await nats.connect(grid.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)

    with pytest.raises(Exception, match="(?i)ssl|tls"):  # TLS is required, with a certificate of the grid's CA
        asyncio.run(raw())


def test_a_client_can_neither_forge_writes_nor_trim_the_log_nor_touch_membership(secure_grid: LocalGrid) -> None:
    """The client role sends requests, reads its replies and reads the log (change feeds), nothing else:
    publishing to a log or claim subject, writing a member record or the table, deleting or trimming the stream
    and subscribing to every subject or to other inboxes are each refused by NATS; the values are unchanged."""
    grid = secure_grid
    access = grid.client_access
    member = next(iter(grid.status().members))
    partition = space.partition_of("kv", "secure-0")

    def js_request(subject: str, body: dict[str, Any]) -> Callable[[Any], Awaitable[Any]]:
        async def attack(nc: Any) -> Any:
            return await nc.request(subject, json.dumps(body).encode(), timeout=2)
        return attack

    async def attacks() -> list[str]:
        seen = []
        seen.append(await _denied(access, grid.url, lambda nc: nc.publish(NAMES.pu_log_subject(member),
                                                                           _forged_log_message())))
        seen.append(await _denied(access, grid.url, lambda nc: nc.publish(NAMES.claim_subject(partition),
                                                                           codec.encode([10**6, "intruder"]))))
        seen.append(await _denied(access, grid.url, lambda nc: nc.publish(f"$KV.{NAMES.members_bucket}.intruder",
                                                                           codec.encode({"pid": 1}))))
        seen.append(await _denied(access, grid.url, lambda nc: nc.publish(f"$KV.{NAMES.members_bucket}.{member}",
                                                                           b"", headers={"KV-Operation": "DEL"})))
        seen.append(await _denied(access, grid.url, lambda nc: nc.publish(f"$KV.{NAMES.table_bucket}.table",
                                                                           b"{}")))
        seen.append(await _denied(access, grid.url,
                                  js_request(f"$JS.API.STREAM.DELETE.{NAMES.stream}", {})))
        seen.append(await _denied(access, grid.url,  # reading the log is allowed (change feeds), trimming it not
                                  js_request(f"$JS.API.STREAM.PURGE.{NAMES.stream}", {})))
        seen.append(await _denied(access, grid.url, lambda nc: nc.subscribe(">")))
        seen.append(await _denied(access, grid.url, lambda nc: nc.subscribe("_INBOX.>")))
        return seen

    violations = asyncio.run(attacks())
    assert len(violations) == 9 and all("permissions violation" in v.lower() for v in violations)
    assert asyncio.run(_read_keys(grid)) == KEYS
    assert asyncio.run(_absent(grid, f"$KV.{NAMES.members_bucket}.intruder")), "no member record was forged"


async def _absent(grid: LocalGrid, subject: str) -> bool:
    nc = await nats.connect(grid.url, **nats_options(grid.access))
    try:
        stream = f"KV_{NAMES.members_bucket}" if subject.startswith("$KV.") else NAMES.stream
        try:
            await nc.jetstream().get_last_msg(stream, subject)
        except NotFoundError:
            return True
        return False
    finally:
        await nc.close()


def test_a_pu_may_append_only_to_its_own_log_subject_and_never_delete_the_stream(secure_grid: LocalGrid) -> None:
    """A PU's credential names its member: appending to another member's log subject and deleting the stream
    are refused; the reader role may not send requests to PUs."""
    grid = secure_grid
    assert grid.secrets is not None
    members = list(grid.status().members)
    ca = grid.access.tls_ca_path if grid.access is not None else None
    rogue = Access(grid.secrets.pu_creds("rogue-member"), ca)

    async def attacks() -> list[str]:
        async def delete_stream(nc: Any) -> Any:
            return await nc.request(f"$JS.API.STREAM.DELETE.{NAMES.stream}", b"", timeout=2)

        return [
            await _denied(rogue, grid.url, lambda nc: nc.publish(NAMES.pu_log_subject(members[0]),
                                                                  _forged_log_message())),
            await _denied(rogue, grid.url, delete_stream),
            await _denied(Access(grid.secrets.role_creds("reader"), ca), grid.url,
                          lambda nc: nc.publish(NAMES.pu_subject(members[0]), b"\x90")),
        ]

    assert len(asyncio.run(attacks())) == 3
    assert asyncio.run(_absent(grid, NAMES.pu_log_subject("rogue-member")))
    assert asyncio.run(_read_keys(grid)) == KEYS


def test_a_pu_writes_no_member_record_but_its_own(secure_grid: LocalGrid) -> None:
    """A PU's credential (a rogue one, of a member that is not in the grid) can not overwrite a running PU's
    member record, delete it (a KV delete marker, or a purge of the bucket), create a fake member's record, update
    the members stream, or delete a log message: each is refused by NATS; afterwards no fake record exists, both
    PUs are still members with their own records, and the values are unchanged."""
    grid = secure_grid
    assert grid.secrets is not None
    members = grid.status().members
    victim = next(iter(members))
    ca = grid.access.tls_ca_path if grid.access is not None else None
    rogue = Access(grid.secrets.pu_creds("rogue-member"), ca)
    record = f"$KV.{NAMES.members_bucket}"
    forged = codec.encode({"pid": 1, "incarnation": "forged", "host": "attacker"})

    def js_request(subject: str, body: dict[str, Any]) -> Callable[[Any], Awaitable[Any]]:
        async def attack(nc: Any) -> Any:
            return await nc.request(subject, json.dumps(body).encode(), timeout=2)
        return attack

    async def attacks() -> list[str]:
        return [
            await _denied(rogue, grid.url, lambda nc: nc.publish(f"{record}.{victim}", forged)),
            await _denied(rogue, grid.url, lambda nc: nc.publish(f"{record}.{victim}", b"",
                                                                  headers={"KV-Operation": "DEL"})),
            await _denied(rogue, grid.url, lambda nc: nc.publish(f"{record}.intruder", forged)),
            await _denied(rogue, grid.url, js_request(f"$JS.API.STREAM.PURGE.KV_{NAMES.members_bucket}", {})),
            await _denied(rogue, grid.url, js_request(f"$JS.API.STREAM.UPDATE.KV_{NAMES.members_bucket}",
                                                      {"name": f"KV_{NAMES.members_bucket}"})),
            await _denied(rogue, grid.url, js_request(f"$JS.API.STREAM.MSG.DELETE.{NAMES.stream}", {"seq": 1})),
        ]

    assert len(asyncio.run(attacks())) == 6
    assert asyncio.run(_absent(grid, f"{record}.intruder")), "no member record was forged"
    after = grid.status().members
    assert set(after) == set(members)
    assert all(after[m].get("incarnation") == members[m].get("incarnation") for m in members)
    assert asyncio.run(_read_keys(grid)) == KEYS


def test_secrets_stay_in_0600_files_of_a_0700_data_dir(secure_grid: LocalGrid) -> None:
    """The data dir is 0700, every key (nkeys, TLS keys) and credential 0600, the nats-server configuration too;
    no seed or JWT is in a process's arguments or in grid.json."""
    grid = secure_grid
    assert stat.S_IMODE(grid.data_dir.stat().st_mode) == 0o700
    files = [p for p in (grid.data_dir / SECRETS_DIR).rglob("*") if p.is_file()]
    secret_files = [p for p in files if not p.name.endswith(".pem") or p.name.endswith("-key.pem")]  # certificates
    assert len(secret_files) >= 8  # are public; their keys are not
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in secret_files} == {oct(0o600)}
    assert stat.S_IMODE((grid.data_dir / "nats" / "nats-server.conf").stat().st_mode) == 0o600
    pids = [pu.pid for pu in grid.pus] + [node.pid for node in grid.nats_nodes]
    texts = [(grid.data_dir / GRID_FILE).read_text()]
    texts += [open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace") for pid in pids]
    for text in texts:
        assert not SEED.search(text), "no nkey seed in arguments or grid.json"
        assert "eyJ" not in text, "no JWT in arguments or grid.json"
    assert os.environ.get("SPACEGRID_CREDS") is None


def test_a_revoked_credential_is_refused_and_its_replacement_works(secure_grid: LocalGrid, tmp_path: Any) -> None:
    """Rotation as the runbook does it: mint a new client credential, revoke the old one with `spacegrid auth
    revoke` on the running grid: the old one's connection is closed and it can not connect again, the new one
    works, and the values are unchanged."""
    import subprocess
    import sys

    grid = secure_grid
    ca = grid.client_access.tls_ca_path
    old = grid.client_access
    new_path = tmp_path / "new-client.creds"
    cli = [sys.executable, "-m", "spacegrid.cli.main", "auth"]
    minted = subprocess.run([*cli, "creds", "client", "--out", str(new_path), "--data-dir", str(grid.data_dir),
                             "--app", APP], capture_output=True, text=True, timeout=60)
    assert minted.returncode == 0, minted.stderr

    async def rotate() -> None:
        closed = asyncio.Event()

        async def on_closed() -> None:
            closed.set()

        nc = await nats.connect(grid.url, closed_cb=on_closed, allow_reconnect=False, **nats_options(old))
        revoked = await asyncio.to_thread(subprocess.run, [*cli, "revoke", str(old.creds_path), "--data-dir",
                                                           str(grid.data_dir), "--app", APP],
                                          capture_output=True, text=True, timeout=60)
        assert revoked.returncode == 0 and "reloaded" in revoked.stdout, revoked.stdout + revoked.stderr
        await asyncio.wait_for(closed.wait(), 10.0)  # the server closed the revoked user's connection
        assert nc.is_closed

    asyncio.run(rotate())
    with pytest.raises(AccessDenied):
        asyncio.run(asyncio.wait_for(Client.connect(space, grid.url, access=old), 10.0))
    assert asyncio.run(_read_with(grid, Access(new_path, ca))) == KEYS


async def _read_with(grid: LocalGrid, access: Access) -> dict[str, Any]:
    async with await Client.connect(space, grid.url, access=access) as client:
        return await client.get_many("kv", list(KEYS))
