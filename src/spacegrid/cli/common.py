"""What the commands share: options, finding the grid (grid.json, --nats, --app), connecting within a bound, the data
dir lock, and failing with a message."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from spacegrid.config import (GRID_LIMITS, OPTIONS, STORE_PASSWORD_FILE, GridConfig, check_store_url,
                              normalize_store_url, split_store_password)
from spacegrid.datadir import DataDirLock, process_running
from spacegrid.errors import ConfigError, GridUnavailable, SpacegridError
from spacegrid.launcher import DEFAULT_APP, GRID_FILE, load_space, read_grid_file
from spacegrid.limits import DEFAULT_LIMITS, Limits
from spacegrid.security.access import ENV_CREDS, ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY, Access
from spacegrid.space import Space

if TYPE_CHECKING:  # typing only: the client and the transport import nats, loaded when a command runs
    from spacegrid.client.client import Client
    from spacegrid.engine.transport import Transport

T = TypeVar("T")
console = Console(stderr=True)
DATA_DIR_DEFAULT = ".spacegrid"
OPEN_GRACE_S = 2.0  # after connecting: opening the space (KV buckets, partition table) within this

data_dir_option = click.option("--data-dir", type=click.Path(path_type=Path), default=DATA_DIR_DEFAULT,
                               show_default=True, help="Where the embedded grid keeps its data and grid.json.")
nats_option = click.option("--nats", "nats_url", default=None, help="NATS URL(s), comma-separated; default: from grid.json.")
app_option = click.option("--app", default=None, help=f"MODULE:SPACE to serve or talk to (default: grid.json's, else {DEFAULT_APP}).")
deadline_option = click.option("--deadline-s", type=float, default=DEFAULT_LIMITS.call_deadline_s, show_default=True)
connect_timeout_option = click.option(
    "--connect-timeout-s", type=click.FloatRange(0.1, 600), default=DEFAULT_LIMITS.connect_timeout_s,
    show_default=True, help="Give up connecting to NATS after this (at once if nothing listens there).")


_ACCESS_KEY = "spacegrid.access"
_ACCESS_OPTIONS = (
    ("creds", ENV_CREDS, "The NATS .creds file to connect with [default: the data dir's, for this command's role]."),
    ("tls-ca", ENV_TLS_CA, "The CA certificate that signed the NATS servers' certificates (PEM)."),
    ("tls-cert", ENV_TLS_CERT, "This process's client certificate (PEM), where NATS asks for one."),
    ("tls-key", ENV_TLS_KEY, "The key of --tls-cert (PEM, mode 0600)."),
)


def _remember_access(context: click.Context, parameter: click.Parameter, value: Path | None) -> None:
    if value is not None and parameter.name is not None:
        context.meta.setdefault(_ACCESS_KEY, {})[parameter.name] = value


def access_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--creds, --tls-ca, --tls-cert, --tls-key (each also from its SPACEGRID_* variable); read by given_access()."""
    for name, env, help_text in reversed(_ACCESS_OPTIONS):
        command = click.option(f"--{name}", name.replace("-", "_"), envvar=env, default=None, expose_value=False,
                               callback=_remember_access, type=click.Path(path_type=Path, dir_okay=False),
                               help=help_text)(command)
    return command


def given_access(data_dir: Path | None, role: str) -> Access:
    """This command's credential: its options (or SPACEGRID_* variables), else DATA_DIR/secrets/<role>.creds."""
    context = click.get_current_context(silent=True)
    given = context.meta.get(_ACCESS_KEY, {}) if context is not None else {}
    explicit = Access(given.get("creds"), given.get("tls_ca"), given.get("tls_cert"), given.get("tls_key"))
    return Access.resolve(explicit, data_dir, role)


LIMIT_HELP = {
    "heartbeat_interval_s": "How often a PU renews its heartbeat.",
    "lease_s": "Reads are served only this long after the last renewed heartbeat was sent.",
    "heartbeat_timeout_s": "A PU silent this long is declared dead.",
    "handler_time_limit_s": "A handler running longer is stopped.",
    "catch_ups_max": "Backups catching up with the log at once (paces live migration).",
    "write_behind_delay_s": "The pump persists new writes at most this long after.",
    "write_behind_batch_rows": "Rows per store transaction.",
    "log_trim_age_s": "The log keeps what was persisted this long ago, for exactly-once retries after a double "
                      "failure; keep it above clients' call deadlines.",
}


def grid_limit_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The Limits every PU of a grid shares, as options defaulting to None ("not given": the grid's)."""
    for name in reversed(GRID_LIMITS):
        default = getattr(DEFAULT_LIMITS, name)
        command = click.option(OPTIONS[name], name, type=type(default), default=None,
                               help=f"{LIMIT_HELP[name]} Grid-wide [default: the grid's; a new grid's: {default}]")(command)
    return command


def given_settings(values: dict[str, Any]) -> dict[str, Any]:
    """The grid settings among a command's parameters that were given (not None)."""
    return {name: value for name, value in values.items() if name in GridConfig.__dataclass_fields__
            and value is not None}


def given_store(url: str | None) -> tuple[str | None, str | None]:
    """A --store value as a grid setting (no password; a relative sqlite path made absolute) and its password."""
    if url is None:
        return None, None
    check_store_url(url)
    clean, password = split_store_password(url)
    return normalize_store_url(clean), password


def fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)  # one line: greppable
    sys.exit(1)


def resolve(data_dir: Path, nats_url: str | None, app: str | None) -> tuple[str, Space]:
    """The NATS URL and the space: from the options, else from DATA_DIR/grid.json (refused if the launcher that
    wrote it is gone)."""
    if nats_url is None:
        grid = read_running_grid_file(data_dir)
        nats_url, app = grid["nats_url"], app or grid.get("app")
    elif app is None and (data_dir / GRID_FILE).exists():
        app = read_grid_file(data_dir).get("app")
    return nats_url, load_space(app or DEFAULT_APP)


def read_running_grid_file(data_dir: Path) -> dict[str, Any]:
    """grid.json of a grid whose launcher still runs; GridUnavailable for one a crashed launcher left behind."""
    grid = read_grid_file(data_dir)
    launcher_pid = grid.get("launcher_pid")
    if isinstance(launcher_pid, int) and not process_running(launcher_pid):
        raise GridUnavailable(f"the grid at {data_dir} is not running: its launcher (pid {launcher_pid}) is gone "
                              f"({data_dir / GRID_FILE} is left from it); start it with "
                              f"`spacegrid up --data-dir {data_dir}`")
    return grid


def lock_data_dir(data_dir: Path, role: str) -> DataDirLock:
    """Lock the data dir for this process, or fail naming the holder (and, for a grid, how to join it instead)."""
    try:
        return DataDirLock.acquire(data_dir, role)
    except ConfigError as exc:
        hint = ""
        try:
            grid = read_grid_file(data_dir)
        except (GridUnavailable, ValueError, OSError):
            pass
        else:
            password_file = data_dir / STORE_PASSWORD_FILE
            password = f" --store-password-file {password_file}" if password_file.exists() else ""
            access = Access.of_data_dir(data_dir)
            creds = (f" --creds $(spacegrid auth creds pu --data-dir {data_dir}) --tls-ca {access.tls_ca_path}"
                     if access.tls_ca_path is not None else "")
            hint = (f"; to add a PU to the grid running there, give it no data dir of its own: `spacegrid pu "
                    f"--nats {grid['nats_url']} --app {grid.get('app', DEFAULT_APP)}{password}{creds}` (it takes the "
                    f"grid's store and limits from the grid's configuration)")
        raise ConfigError(f"{exc}{hint}") from None


def parse_json(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"{what} must be JSON ({exc}); e.g. '{{\"seats\": 100}}'") from None


async def within_connect_bound(opening: Coroutine[Any, Any, T], url: str, connect_timeout_s: float,
                               open_s: float = OPEN_GRACE_S) -> T:
    """Run `opening` (a connect, then reading the space's metadata) within connect_timeout_s plus `open_s`; past
    it, GridUnavailable saying NATS is unreachable."""
    try:
        return await asyncio.wait_for(opening, connect_timeout_s + open_s)
    except TimeoutError:
        raise GridUnavailable(f"NATS at {url} is unreachable: no answer within {connect_timeout_s:g} s; check the "
                              f"network, the host and --nats, or raise --connect-timeout-s") from None


def run_until_interrupted(main: Coroutine[Any, Any, None], failures: tuple[type[Exception], ...] = ()) -> None:
    """A long-running command's loop: Ctrl-C ends it quietly; a SpacegridError (or one of `failures`) is printed
    and exits 1."""
    try:
        asyncio.run(main)
    except KeyboardInterrupt:
        pass
    except (SpacegridError, *failures) as exc:
        fail(str(exc))


async def open_transport(url: str, name: str, access: Access, connect_timeout_s: float) -> Transport:
    """A connection to the grid's NATS for a command (`name` shows in NATS's connection list), within the bound."""
    from spacegrid.engine.transport import Transport

    return await within_connect_bound(Transport.connect(url, name, connect_timeout_s=connect_timeout_s, access=access),
                                      url, connect_timeout_s)


async def open_client(space: Space, url: str, connect_timeout_s: float, access: Access,
                      limits: Limits = DEFAULT_LIMITS) -> Client:
    from dataclasses import replace

    from spacegrid.client.client import Client

    limits = replace(limits, connect_timeout_s=connect_timeout_s)
    return await within_connect_bound(Client.connect(space, url, limits, access=access), url, connect_timeout_s)


def with_client(data_dir: Path, nats_url: str | None, app: str | None, connect_timeout_s: float,
                body: Callable[[Client], Awaitable[T]]) -> T:
    access = given_access(data_dir, "client")

    async def run() -> T:
        url, space = resolve(data_dir, nats_url, app)
        client = await open_client(space, url, connect_timeout_s, access)
        try:
            return await body(client)
        finally:
            await client.close()

    return asyncio.run(run())


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, default=lambda o: o.hex() if isinstance(o, bytes) else str(o)))
