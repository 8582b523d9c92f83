"""The grid's identities without a server: JWTs that verify, role permissions, the secrets' files and modes, and
how a process finds its credential (ADR 0010)."""

from __future__ import annotations

import base64
import json
import re
import stat
from pathlib import Path

import nkeys
import pytest

from spacegrid.errors import ConfigError
from spacegrid.security import jwt, roles
from spacegrid.security.access import ENV_CREDS, ENV_TLS_CA, Access
from spacegrid.security.jwt import Identity, Permissions
from spacegrid.security.secrets import GridSecrets, member_of_creds, read_secret, write_secret


def _verify(token: str, issuer: Identity) -> dict:
    header, claims, signature = token.split(".")
    padded = signature + "=" * (-len(signature) % 4)
    key = nkeys.from_seed(bytearray(issuer.seed.encode()))
    assert key.verify(f"{header}.{claims}".encode(), base64.urlsafe_b64decode(padded))
    return jwt.decode_claims(token)


def test_a_user_jwt_is_signed_by_its_account_and_carries_its_permissions() -> None:
    """The signature verifies with the account's key; the claims name the user (sub), the account (iss), the
    permissions and version 2, as nats-server expects."""
    account, user = Identity.generate("account"), Identity.generate("user")
    token = jwt.user_jwt(user, account, "client@s", Permissions(publish=("a.>",), subscribe=("b",)))
    claims = _verify(token, account)
    assert claims["sub"] == user.public_key and claims["iss"] == account.public_key
    assert claims["nats"]["pub"] == {"allow": ["a.>"]} and claims["nats"]["sub"] == {"allow": ["b"]}
    assert claims["nats"]["type"] == "user" and claims["nats"]["version"] == 2 and claims["jti"]


def test_seeds_of_the_wrong_kind_or_damaged_are_refused() -> None:
    """A user seed where an account seed is expected, or a damaged one, is a ConfigError saying what to do."""
    with pytest.raises(ConfigError, match="account seed"):
        Identity.from_seed("account", Identity.generate("user").seed)
    with pytest.raises(ConfigError, match="not a valid"):
        Identity.from_seed("operator", "SOnotaseed")


def test_a_client_may_not_publish_to_logs_or_buckets_and_reads_only_its_inbox() -> None:
    """The client role: requests, bucket reads and reading the log (change feeds); its subscribe permission is its
    own inbox prefix."""
    permissions = roles.permissions("client", "s", "UKEY")
    assert permissions.subscribe == ("_INBOX.UKEY.>",)
    assert not [p for p in permissions.publish if p.startswith(("sg.s.log", "$KV.", "$JS.API.STREAM.DELETE"))]
    assert "$JS.API.CONSUMER.CREATE.SG_s" in permissions.publish and "$JS.API.STREAM.PURGE.SG_s" not in permissions.publish
    assert {"sg.s.pu.*", "sg.s.p.*"} <= set(permissions.publish)


def test_a_pu_appends_only_to_its_own_log_subject() -> None:
    """A PU's permissions name its member's log, member record and request subjects; its JetStream API is an
    explicit list over the space's three streams (no wildcard over the API, no deleting or updating a stream, no
    stream of its own); and they need a member id."""
    permissions = roles.permissions("pu", "s", "UKEY", "m1")
    assert "sg.s.log.pu.m1" in permissions.publish and "sg.s.log.pu.>" not in permissions.publish
    assert "$KV.sg_s_members.m1" in permissions.publish and "$KV.sg_s_members.>" not in permissions.publish
    api = [subject for subject in permissions.publish if subject.startswith("$JS.API.")]
    assert all("*" not in subject.removesuffix(".>") and not subject.startswith(("$JS.API.STREAM.DELETE",
               "$JS.API.STREAM.UPDATE")) for subject in api), api
    assert {s.rpartition(".")[2] for s in api if s.startswith("$JS.API.STREAM.CREATE.")} == {
        "SG_s", "KV_sg_s_members", "KV_sg_s_table", "SG_s_events"}
    assert "sg.s.pu.m1" in permissions.subscribe
    with pytest.raises(ValueError, match="member"):
        roles.permissions("pu", "s", "UKEY")
    with pytest.raises(ValueError, match="unknown role"):
        roles.permissions("root", "s", "UKEY")


def test_the_grid_keys_are_made_once_in_0600_files_of_a_0700_directory(tmp_path: Path) -> None:
    """ensure() makes the operator, system and account keys once; a second call reads the same keys; the server's
    configuration holds JWTs only, no seed."""
    first = GridSecrets.ensure(tmp_path / "d", "s")
    again = GridSecrets.ensure(tmp_path / "d", "s")
    assert first.account.public_key == again.account.public_key
    assert stat.S_IMODE(first.directory.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in first.directory.glob("*.nk")} == {0o600}
    config = "\n".join(first.server_config())
    assert "resolver: MEMORY" in config and not re.search(r"S[UAO][A-Z2-7]{56}", config), "no seed in the config"


def test_role_credentials_are_reused_and_reminted_when_their_permissions_change(tmp_path: Path) -> None:
    """role_creds() keeps a credential with this version's permissions, and re-mints one whose permissions are
    stale (an upgrade) or which names another space."""
    grid = GridSecrets.ensure(tmp_path / "d", "s")
    path = grid.role_creds("client")
    text = path.read_text()
    assert grid.role_creds("client").read_text() == text
    stale = jwt.creds_text(jwt.user_jwt(Identity.generate("user"), grid.account, "client@s", Permissions()),
                           Identity.generate("user"))
    write_secret(path, stale)
    assert grid.role_creds("client").read_text() != stale
    other = GridSecrets.ensure(tmp_path / "d", "t").role_creds("client")
    assert jwt.decode_claims(jwt.jwt_of_creds(other.read_text()))["name"] == "client@t"


def test_a_pu_credential_names_its_member(tmp_path: Path) -> None:
    """A PU credential carries its member id (the PU takes it as its own); other roles name none."""
    grid = GridSecrets.ensure(tmp_path / "d", "s")
    assert member_of_creds(grid.pu_creds("host-1-abc").read_text()) == "host-1-abc"
    assert member_of_creds(grid.role_creds("admin").read_text()) is None


def test_secret_files_open_to_others_are_refused(tmp_path: Path) -> None:
    """A credential readable by other users is refused, saying how to fix it."""
    path = write_secret(tmp_path / "x.creds", "secret")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_secret(path, "credentials file")


def test_explicit_options_win_over_the_environment_and_the_data_dir(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Access.resolve: explicit paths, then SPACEGRID_* variables, then DATA_DIR/secrets/<role>.creds; the inbox
    prefix is the credential's own."""
    grid = GridSecrets.ensure(tmp_path / "d", "s")
    client = grid.role_creds("client")
    assert Access.resolve(None, tmp_path / "d", "client").creds_path == client
    monkeypatch.setenv(ENV_CREDS, str(grid.role_creds("reader")))
    monkeypatch.setenv(ENV_TLS_CA, "/ca.pem")
    from_env = Access.resolve(None, tmp_path / "d", "client")
    assert from_env.creds_path == grid.role_creds("reader") and from_env.tls_ca_path == Path("/ca.pem")
    explicit = Access.resolve(Access(client), tmp_path / "d", "reader")
    assert explicit.creds_path == client and explicit.tls_ca_path == Path("/ca.pem")
    user = json.loads(base64.urlsafe_b64decode(jwt.jwt_of_creds(client.read_text()).split(".")[1] + "=="))["sub"]
    assert explicit.inbox_prefix() == f"_INBOX.{user}"


def test_an_insecure_grid_is_refused_beyond_loopback(tmp_path: Path) -> None:
    """`spacegrid up --insecure --listen 0.0.0.0` is refused, saying how to listen there safely; loopback is fine."""
    from spacegrid.launcher import LocalGrid

    with pytest.raises(ConfigError, match="drop --insecure"):
        LocalGrid(tmp_path / "a", secure=False, nats_host="0.0.0.0")
    LocalGrid(tmp_path / "b", secure=False, nats_host="127.0.0.1")
    LocalGrid(tmp_path / "c", secure=True, nats_host="0.0.0.0")


def test_a_revoked_user_is_in_the_account_jwt_and_its_role_file_is_reminted(tmp_path: Path) -> None:
    """revoke() records the user's key with a time; the account JWT the server preloads carries it; the role's
    credential file is minted anew rather than handed out revoked; a credential of another grid is refused."""
    grid = GridSecrets.ensure(tmp_path / "d", "s")
    path = grid.role_creds("client")
    user = grid.revoke(path.read_text(), 1_000)
    assert grid.revocations() == {user: 1_000}
    account = jwt.decode_claims(grid.account_preload_line().split('"')[1])
    assert account["nats"]["revocations"] == {user: 1_000}
    assert jwt.decode_claims(jwt.jwt_of_creds(grid.role_creds("client").read_text()))["sub"] != user
    other = GridSecrets.ensure(tmp_path / "e", "s")
    with pytest.raises(ConfigError, match="not issued by this grid"):
        grid.revoke(other.role_creds("client").read_text(), 2_000)
