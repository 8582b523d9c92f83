"""`spacegrid auth`: credentials of a grid whose keys are in a data dir (ADR 0010): mint one for a role, revoke one,
and export what nats-servers run elsewhere need to trust the grid (Docker Compose, Kubernetes, systemd; ADR 0011)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from spacegrid.cli.common import app_option, data_dir_option, fail
from spacegrid.errors import SpacegridError
from spacegrid.launcher import DEFAULT_APP, last_app, load_space
from spacegrid.limits import GATEWAY_TOKEN_TTL_S_MAX
from spacegrid.security.jwt import Identity
from spacegrid.security.roles import ROLES
from spacegrid.security.secrets import SECRETS_DIR, GridSecrets, mint, new_member_id, write_secret


@click.group()
def auth() -> None:
    """The grid's credentials: each role its own .creds file, minted from the keys in DATA_DIR/secrets."""


@auth.command("creds")
@click.argument("role", type=click.Choice(ROLES))
@data_dir_option
@app_option
@click.option("--member-id", default=None, help="For ROLE pu: the member the PU will be (default: a new one).")
@click.option("--out", "out_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write it here (mode 0600) [default: DATA_DIR/secrets/<role>.creds, or secrets/pu/<member>.creds].")
@click.option("--account-key-env", "account_key_env", metavar="VAR", default=None,
              help="Sign with the grid account's nkey seed (DATA_DIR/secrets/account.nk) read from the environment "
                   "variable VAR instead of a data dir, e.g. a Kubernetes init container given a Secret "
                   "(docs/deploy.md). Needs --app and --out.")
def creds(role: str, data_dir: Path, app: str | None, member_id: str | None, out_path: Path | None,
          account_key_env: str | None) -> None:
    """Mint a new credential for ROLE and print its path (never its contents). A PU's credential names its member:
    `spacegrid pu --nats URL --app M:S --creds $(spacegrid auth creds pu)` adds a PU to a running grid."""
    if account_key_env is not None:
        _creds_from_env(role, account_key_env, app, member_id, out_path)
        return
    if not (data_dir / SECRETS_DIR / "account.nk").exists():
        fail(f"{data_dir} holds no grid keys ({data_dir / SECRETS_DIR}/account.nk): start the grid once with "
             f"`spacegrid up --data-dir {data_dir}`, or make them with `spacegrid auth server-config --data-dir "
             f"{data_dir} --out DIR`, or give the data dir of the grid that made them")
    space = load_space(app or last_app(data_dir) or DEFAULT_APP)
    grid = GridSecrets.ensure(data_dir, space.name)
    if role == "pu":
        member_id = member_id or new_member_id("m")
        path = out_path or grid.directory / "pu" / f"{member_id}.creds"
        write_secret(path, grid.mint("pu", member_id))
    elif out_path is None:
        path = grid.directory / f"{role}.creds"
        write_secret(path, grid.mint(role))
    else:
        path = write_secret(out_path, grid.mint(role))
    click.echo(str(path.resolve()))


def _creds_from_env(role: str, variable: str, app: str | None, member_id: str | None, out_path: Path | None) -> None:
    """`creds --account-key-env VAR`: mint with the account seed in $VAR; nothing read from or written to a data dir."""
    if app is None or out_path is None:
        fail("--account-key-env needs --app (the credential is for that app's space) and --out (no data dir is used)")
    seed = os.environ.get(variable, "").strip()
    if not seed:
        fail(f"${variable} is empty or not set: give it the grid account's seed (DATA_DIR/secrets/account.nk)")
    try:
        account = Identity.from_seed("account", seed)
    except SpacegridError as exc:
        fail(f"${variable}: {exc}")
    space = load_space(app)
    try:
        text = mint(account, space.name, role, (member_id or new_member_id("m")) if role == "pu" else None)
    except ValueError as exc:  # a member id that is not one subject token (a pod name with a dot)
        fail(str(exc))
    click.echo(str(write_secret(out_path, text).resolve()))


@auth.command("token")
@click.argument("role", type=click.Choice(("reader", "client")))
@data_dir_option
@click.option("--token-key", "token_key", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="The gateway's key file (made 0600 if missing) [default: DATA_DIR/secrets/gateway.key].")
@click.option("--ttl-s", type=click.FloatRange(0, GATEWAY_TOKEN_TTL_S_MAX), default=0.0, show_default=True,
              help="Seconds until the token expires; 0: never.")
@click.option("--rotate-key", is_flag=True, help="Make a new gateway key first: every token issued before is refused "
                                                 "once the gateway restarts.")
def token(role: str, data_dir: Path, token_key: Path | None, ttl_s: float, rotate_key: bool) -> None:
    """Mint a bearer token of `spacegrid gateway` for ROLE (reader: reads and queries; client: writes too) and print
    it: it is a secret, `TOKEN=$(spacegrid auth token client)`. docs/gateway.md."""
    import time

    from spacegrid.gateway.auth import ensure_key, key_path, mint_token

    try:
        key = ensure_key(token_key or key_path(data_dir), rotate=rotate_key)
        click.echo(mint_token(key, role, ttl_s, time.time()))
    except SpacegridError as exc:
        fail(str(exc))


@auth.command("server-config")
@data_dir_option
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="The directory to write into (created 0700).")
@click.option("--tls-host", "tls_hosts", multiple=True, metavar="HOST",
              help="Also issue a server certificate of the grid's CA naming HOST (repeat: every name or address "
                   "clients and routes use, wildcards like '*.nats-headless' allowed), into OUT/tls with its "
                   "tls.conf and route-tls.conf.")
def server_config(data_dir: Path, out_dir: Path, tls_hosts: tuple[str, ...]) -> None:
    """Write what nats-servers run elsewhere need to trust this grid (the keys in DATA_DIR/secrets, made on first
    use as `spacegrid up` makes them): OUT/auth.conf to `include` (operator, accounts, resolver: MEMORY),
    OUT/nats-helm-values.yaml for the NATS Helm chart, and with --tls-host a server certificate. No seed is written:
    the JWTs are public. Run it again after `spacegrid auth revoke` and reload the servers."""
    from spacegrid.security.export import write_server_config

    try:
        written = write_server_config(GridSecrets.ensure(data_dir, space=""), out_dir, tls_hosts)
    except SpacegridError as exc:
        fail(str(exc))
    for path in written:
        click.echo(str(path))


@auth.command("revoke")
@click.argument("creds_path", metavar="CREDS_FILE", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@data_dir_option
@app_option
def revoke(creds_path: Path, data_dir: Path, app: str | None) -> None:
    """Refuse the user of CREDS_FILE from now on: its connections are closed and it can't connect again. The grid
    running on DATA_DIR is reloaded at once (its nats-servers re-read the account); a grid started later keeps the
    revocation (DATA_DIR/secrets/revocations.json). Mint the replacement first: `spacegrid auth creds ROLE`."""
    import signal
    import time

    from spacegrid.engine.server import replace_config_line
    from spacegrid.launcher import GRID_FILE, read_grid_file
    from spacegrid.security.secrets import read_secret

    if not (data_dir / SECRETS_DIR / "account.nk").exists():
        fail(f"{data_dir} holds no grid keys: give the data dir of the grid that issued {creds_path}")
    grid = GridSecrets.ensure(data_dir, load_space(app or last_app(data_dir) or DEFAULT_APP).name)
    try:
        user = grid.revoke(read_secret(creds_path, "credentials file"), int(time.time()))
    except SpacegridError as exc:
        fail(str(exc))
    configs = sorted((data_dir / "nats").rglob("nats-server.conf"))
    rewritten = [path for path in configs if replace_config_line(path, f"  {grid.account.public_key}: ",
                                                                 grid.account_preload_line())]
    reloaded = []
    if (data_dir / GRID_FILE).exists() and rewritten:
        for pid in read_grid_file(data_dir).get("nats_pids", []):
            try:
                os.kill(int(pid), signal.SIGHUP)
                reloaded.append(int(pid))
            except ProcessLookupError:
                pass
    click.echo(f"revoked user {user}: in {grid.directory / 'revocations.json'}"
               + (f"; nats-server pid(s) {', '.join(map(str, reloaded))} reloaded" if reloaded
                  else "; no running grid here to reload (a grid started on this data dir refuses it)"))
