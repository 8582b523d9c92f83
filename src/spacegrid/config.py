"""One configuration for the grid: the settings every PU of a space must share, stored once in the space's KV.

`GridConfig` is what the grid shares: the app and its partition count, the store (its URL without any password),
the durability NATS was set up with (informational), the Limits fields every PU must agree on, and the metrics
policy. `spacegrid up` and `spacegrid init` write it (compare-and-set: create-only, or a forced replace); the first
bare `spacegrid pu` of a grid without one writes its own settings. Every PU then reads it before it builds its
store and its Limits: what it was not given comes from here; what it was given explicitly and differs is refused
(`conflicts`). A store password never goes in: it comes from `--store-password-file`, SPACEGRID_STORE_PASSWORD or
DATA_DIR/store.password (mode 0600).

The pure part (the dataclass, its wire form, conflicts, passwords) needs no NATS; `settle` and `replace` at the end
read and write it through engine.transport."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from spacegrid.durability import Fsync
from spacegrid.errors import ConfigError, GridUnavailable, LogMissing
from spacegrid.limits import DEFAULT_LIMITS, MEMBER_TTL_HEARTBEAT_TIMEOUTS, MEMBER_TTL_S_MIN, Limits
from spacegrid.security.access import Access
from spacegrid.security.secrets import read_secret, write_secret

log = logging.getLogger("spacegrid.config")
T = TypeVar("T")

CONFIG_FORMAT: Final = 1  # the wire form's version; a reader refuses a newer one
NO_STORE: Final = "none"
NOT_RECORDED: Final = "not recorded"  # durability of a grid whose NATS is run by someone else and init did not say
STORE_PASSWORD_ENV: Final = "SPACEGRID_STORE_PASSWORD"
STORE_PASSWORD_FILE: Final = "store.password"  # under the data dir, mode 0600
PARTITIONS_MAX: Final = 4096
REPLICAS_MAX: Final = 5

# The Limits fields every PU of a grid must share (each a `spacegrid pu` option of the same name).
GRID_LIMITS: Final = ("heartbeat_interval_s", "lease_s", "heartbeat_timeout_s", "handler_time_limit_s",
                      "catch_ups_max", "write_behind_delay_s", "write_behind_batch_rows", "log_trim_age_s")

# How each setting is given, for messages: "--lease-s", or where it comes from.
OPTIONS: Final = {
    "app": "--app", "space": "the space's name (Space(NAME, ...))", "partitions": "partitions (the space definition's Space(..., partitions=N))",
    "store": "--store", "replicas": "--replicas", "durability": "--fsync",
    "metrics": "--metrics/--no-metrics (or --metrics-port)", "metrics_host": "--metrics-host",
    **{name: "--" + name.replace("_", "-") for name in GRID_LIMITS},
}


@dataclass(frozen=True, slots=True)
class GridConfig:
    """The grid-wide settings of one space; validated on construction (ConfigError says what is wrong)."""

    app: str  # MODULE:SPACE
    space: str  # the Space's name (its KV buckets and stream are named after it)
    partitions: int
    store: str = NO_STORE  # a store URL without any password, or "none"
    replicas: int = 1  # of the log stream and the KV buckets
    durability: str = NOT_RECORDED  # "fsync=always", "fsync=interval:1s": recorded, not enforced (nats-server's own)
    heartbeat_interval_s: float = DEFAULT_LIMITS.heartbeat_interval_s
    lease_s: float = DEFAULT_LIMITS.lease_s
    heartbeat_timeout_s: float = DEFAULT_LIMITS.heartbeat_timeout_s
    handler_time_limit_s: float = DEFAULT_LIMITS.handler_time_limit_s
    catch_ups_max: int = DEFAULT_LIMITS.catch_ups_max
    write_behind_delay_s: float = DEFAULT_LIMITS.write_behind_delay_s
    write_behind_batch_rows: int = DEFAULT_LIMITS.write_behind_batch_rows
    log_trim_age_s: float = DEFAULT_LIMITS.log_trim_age_s
    metrics: bool = True  # every PU serves Prometheus metrics (its port is its own: --metrics-port, default a free one)
    metrics_host: str = "127.0.0.1"  # the address PUs serve metrics on
    written_by: str = ""  # informational: which command wrote it, where, when; never compared

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            expected = {"int": int, "float": (int, float), "bool": bool, "str": str}[str(f.type)]
            if isinstance(value, bool) is not (f.type == "bool") or not isinstance(value, expected):
                raise ConfigError(f"grid setting {f.name} must be a {f.type}, not {value!r}")
            if f.type == "float":
                object.__setattr__(self, f.name, float(value))
        module, _, attribute = self.app.partition(":")
        if not module or not attribute:
            raise ConfigError(f"grid setting app must be MODULE:SPACE, not {self.app!r}")
        if not self.space:
            raise ConfigError("grid setting space (the Space's name) must not be empty")
        if not 1 <= self.partitions <= PARTITIONS_MAX:
            raise ConfigError(f"grid setting partitions must be in 1..{PARTITIONS_MAX}, not {self.partitions}")
        if not 1 <= self.replicas <= REPLICAS_MAX:
            raise ConfigError(f"--replicas must be in 1..{REPLICAS_MAX}, not {self.replicas}")
        check_store_url(self.store)
        if split_store_password(self.store)[1] is not None:
            raise ConfigError("a store password never goes into the grid's configuration: strip it from the URL")
        if not self.durability or not self.metrics_host:
            raise ConfigError("grid settings durability and metrics_host must not be empty")
        self._check_limits()

    def _check_limits(self) -> None:
        for name in GRID_LIMITS:
            if getattr(self, name) <= 0 and name != "log_trim_age_s" or getattr(self, name) < 0:
                raise ConfigError(f"{OPTIONS[name]} must be positive, not {getattr(self, name)}")
        if not self.heartbeat_interval_s < self.lease_s <= self.heartbeat_timeout_s:
            raise ConfigError(f"the heartbeat settings must satisfy --heartbeat-interval-s < --lease-s <= "
                              f"--heartbeat-timeout-s, not {self.heartbeat_interval_s:g} < {self.lease_s:g} <= "
                              f"{self.heartbeat_timeout_s:g}")

    @property
    def store_url(self) -> str | None:
        """The store URL (without password), or None for a grid without a store."""
        return None if self.store == NO_STORE else self.store

    def limits(self, base: Limits = DEFAULT_LIMITS) -> Limits:
        """`base` (a process's own bounds) with the grid's shared ones."""
        return replace(base, **{name: getattr(self, name) for name in GRID_LIMITS})

    def settings(self) -> dict[str, Any]:
        """Every compared setting by name (written_by left out)."""
        return {name: value for name, value in asdict(self).items() if name != "written_by"}

    def to_wire(self) -> dict[str, Any]:
        """A msgpack- and JSON-safe dict, with the format version."""
        return {"format": CONFIG_FORMAT, **asdict(self)}

    @classmethod
    def from_wire(cls, wire: Any) -> GridConfig:
        if not isinstance(wire, dict):
            raise ConfigError(f"the grid's configuration is not a map: {type(wire).__name__}")
        version = wire.get("format")
        if version != CONFIG_FORMAT:
            raise ConfigError(f"the grid's configuration has format {version!r}; this spacegrid reads format "
                              f"{CONFIG_FORMAT}: upgrade spacegrid (or rewrite it with `spacegrid init --force`)")
        known = {f.name: f for f in fields(cls)}
        values = {name: _coerce(known[name].type, value) for name, value in wire.items() if name in known}
        missing = [name for name in ("app", "space", "partitions") if name not in values]
        if missing:
            raise ConfigError(f"the grid's configuration lacks {', '.join(missing)}")
        return cls(**values)


def _coerce(kind: Any, value: Any) -> Any:
    """A float setting written as an integer (JSON, msgpack) is still a float."""
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@dataclass(frozen=True, slots=True)
class Conflict:
    """A setting given explicitly to a process that differs from the grid's."""

    setting: str
    grid_value: Any
    given_value: Any

    def describe(self) -> str:
        return (f"{OPTIONS.get(self.setting, self.setting)}: the grid has {_show(self.grid_value)}, "
                f"this process was given {_show(self.given_value)}")


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)


def conflicts(stored: GridConfig, given: Mapping[str, Any]) -> list[Conflict]:
    """The settings in `given` (only those given explicitly; store URLs without password) that differ from
    `stored`, in field order. Unknown names are a programmer error."""
    unknown = set(given) - set(stored.settings())
    assert not unknown, f"not grid settings: {sorted(unknown)}"
    found = []
    for name, grid_value in stored.settings().items():
        if name not in given:
            continue
        value = given[name]
        same = float(value) == float(grid_value) if isinstance(grid_value, float) else value == grid_value
        if not same:
            found.append(Conflict(name, grid_value, value))
    return found


def refusal(found: list[Conflict], stored: GridConfig, who: str, how: str) -> ConfigError:
    """The error that refuses a process whose explicit settings conflict with the grid's."""
    listed = "; ".join(conflict.describe() for conflict in found)
    return ConfigError(f"{who} refused: its settings conflict with the configuration of grid "
                       f"{stored.space!r} (written by {stored.written_by or 'an earlier spacegrid'}): {listed}. "
                       f"{how}")


def written_by(command: str) -> str:
    return f"{command} (pid {os.getpid()} on {os.uname().nodename}, {time.strftime('%Y-%m-%dT%H:%M:%S%z')})"


def durability_of(sync_interval: str | None) -> str:
    """The durability setting recorded for nats-servers run with this `sync_interval` (None: JetStream's default)."""
    return f"fsync={Fsync.from_sync_interval(sync_interval).label}"


# ---- store URLs and their passwords --------------------------------------------------------------------------


def check_store_url(url: str) -> None:
    if url != NO_STORE and not url.startswith(("sqlite:", "postgresql://", "postgres://")):
        raise ConfigError(f"unknown store URL {url!r}: use sqlite:///absolute/path.db, "
                          "postgresql://user@host:port/database or 'none'")


def normalize_store_url(url: str) -> str:
    """A sqlite: URL with a relative path made absolute (PUs run from other directories); others as they are."""
    if not url.startswith("sqlite:"):
        return url
    from spacegrid.store.factory import sqlite_path

    return f"sqlite://{Path(sqlite_path(url)).resolve()}"


def split_store_password(url: str) -> tuple[str, str | None]:
    """(the URL without its password, the password or None): from user:password@ or a password= parameter."""
    if not url.startswith(("postgresql://", "postgres://")):
        return url, None
    parts = urlsplit(url)
    password = None if parts.password is None else unquote(parts.password)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = f"{userinfo.split(':', 1)[0]}{at}{hostport}" if at else parts.netloc
    query = parse_qsl(parts.query, keep_blank_values=True)
    for name, value in query:
        if name == "password":
            password = value
    kept = urlencode([(name, value) for name, value in query if name != "password"])
    return urlunsplit(parts._replace(netloc=netloc, query=kept)), password


def with_store_password(url: str, password: str | None) -> str:
    """The URL to connect with: `password` put into its user part (a URL without a user gets none)."""
    if password is None or not url.startswith(("postgresql://", "postgres://")):
        return url
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        raise ConfigError("a store password needs a user in the store URL: postgresql://USER@host/db")
    return urlunsplit(parts._replace(netloc=f"{userinfo}:{quote(password, safe='')}@{hostport}"))


def read_store_password(password_file: Path | None, data_dir: Path | None) -> str | None:
    """The store password: from `password_file` if given, else SPACEGRID_STORE_PASSWORD, else
    DATA_DIR/store.password if it exists; None if none. A file readable by others is refused."""
    if password_file is not None:
        return _read_secret(password_file)
    if os.environ.get(STORE_PASSWORD_ENV):
        return os.environ[STORE_PASSWORD_ENV]
    if data_dir is not None and (data_dir / STORE_PASSWORD_FILE).exists():
        return _read_secret(data_dir / STORE_PASSWORD_FILE)
    return None


def _read_secret(path: Path) -> str:
    return read_secret(path, "store password file").rstrip("\r\n")


def write_store_password(data_dir: Path, password: str) -> Path:
    """Keep the password in DATA_DIR/store.password, mode 0600 from its creation on."""
    return write_secret(data_dir / STORE_PASSWORD_FILE, password + "\n")


# ---- the launcher's PU arguments -----------------------------------------------------------------------------


def split_grid_args(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """`spacegrid pu` arguments split into grid-wide Limits settings ({"lease_s": 1.0}) and the rest (per-process
    options, passed on as they are). Takes `--lease-s 1.0` and `--lease-s=1.0`."""
    by_option = {OPTIONS[name]: name for name in GRID_LIMITS}
    settings: dict[str, Any] = {}
    rest: list[str] = []
    items = iter(args)
    for arg in items:
        option, equals, value = arg.partition("=")
        if option not in by_option:
            rest.append(arg)
            continue
        if not equals:
            value = next(items, "")
        name = by_option[option]
        kind = next(f.type for f in fields(GridConfig) if f.name == name)
        try:
            settings[name] = int(value) if kind == "int" else float(value)
        except ValueError:
            raise ConfigError(f"{option} takes a number, not {value!r}") from None
    return settings, rest


def member_ttl_s(heartbeat_timeout_s: float) -> float:
    """The members bucket's TTL, as ProcessingUnit._bootstrap creates it."""
    return max(MEMBER_TTL_S_MIN, MEMBER_TTL_HEARTBEAT_TIMEOUTS * heartbeat_timeout_s)


# ---- in the grid's KV ----------------------------------------------------------------------------------------


async def open_coordination(nats_url: str, space: str, replicas: int, heartbeat_timeout_s: float,
                            limits: Limits = DEFAULT_LIMITS, name: str = "spacegrid-config", create: bool = True,
                            access: Access | None = None) -> Any:
    """(transport, coordination) of the space, its buckets created as a PU creates them if missing (without
    `create`: waited for); retries while JetStream does not answer, up to limits.bootstrap_timeout_s. The caller
    closes the transport."""
    from spacegrid.engine.subjects import Names
    from spacegrid.engine.transport import Transport

    transport = await Transport.connect(nats_url, name, connect_timeout_s=limits.connect_timeout_s,
                                        jetstream_timeout_s=limits.jetstream_api_timeout_s, access=access)
    deadline_s = time.monotonic() + limits.bootstrap_timeout_s
    try:
        await transport.wait_jetstream(Names(space), limits.bootstrap_timeout_s, limits.jetstream_probe_timeout_s)
        while True:
            try:
                coordination = await transport.coordination(Names(space), replicas, create=create,
                                                            member_ttl_s=member_ttl_s(heartbeat_timeout_s))
                return transport, coordination
            except GridUnavailable as exc:
                if time.monotonic() > deadline_s:
                    raise GridUnavailable(f"JetStream did not answer within {limits.bootstrap_timeout_s:g} s: "
                                          f"{exc}") from exc
                log.info("JetStream not ready yet (%s); retrying", exc)
                await asyncio.sleep(limits.bootstrap_retry_s)
    except BaseException:
        await transport.close()
        raise


async def read(coordination: Any) -> tuple[GridConfig | None, int]:
    """The stored configuration and its KV revision; (None, 0) if the grid has none yet."""
    wire, revision = await coordination.read_config()
    return (None if wire is None else GridConfig.from_wire(wire)), revision


async def _answered(step: Callable[[], Awaitable[T]], limits: Limits) -> T:
    """`step()`, again while JetStream does not answer (GridUnavailable), up to limits.bootstrap_timeout_s."""
    deadline_s = time.monotonic() + limits.bootstrap_timeout_s
    while True:
        try:
            return await step()
        except LogMissing:
            raise  # an answer: retrying does not bring the log back
        except GridUnavailable as exc:
            if time.monotonic() > deadline_s:
                raise
            log.info("JetStream not ready yet (%s); retrying", exc)
            await asyncio.sleep(limits.bootstrap_retry_s)


async def settle(coordination: Any, proposed: GridConfig, limits: Limits = DEFAULT_LIMITS) -> tuple[GridConfig, bool]:
    """The grid's configuration: the stored one, or `proposed`, written create-only if there is none (a lost race
    reads the winner's). Returns it and whether this call wrote it. Retried while JetStream does not answer (safe:
    the write is create-only)."""
    return await _answered(lambda: _settle_once(coordination, proposed), limits)


async def _settle_once(coordination: Any, proposed: GridConfig) -> tuple[GridConfig, bool]:
    stored, _ = await read(coordination)
    if stored is None:
        if await coordination.create_config(proposed.to_wire()) is not None:
            log.info("wrote the grid's configuration: %s", proposed.settings())
            return proposed, True
        stored, _ = await read(coordination)
        assert stored is not None, "create refused, so a configuration exists"
    if stored.partitions != proposed.partitions:
        raise ConfigError(f"space {stored.space!r} was created with {stored.partitions} partitions, this "
                          f"definition says {proposed.partitions}; the partition count can't change")
    return stored, False


async def wait_config(coordination: Any, limits: Limits = DEFAULT_LIMITS) -> GridConfig:
    """The stored configuration, once there is one (its launcher writes it meanwhile); GridUnavailable after
    limits.bootstrap_timeout_s."""
    deadline_s = time.monotonic() + limits.bootstrap_timeout_s
    while True:
        try:
            stored, _ = await read(coordination)
        except GridUnavailable as exc:  # JetStream electing its leaders (a cluster that just started)
            log.info("the grid's configuration can't be read yet (%s); retrying", exc)
            stored = None
        if stored is not None:
            return stored
        if time.monotonic() > deadline_s:
            raise GridUnavailable(f"the grid has no configuration after {limits.bootstrap_timeout_s:g} s: write one "
                                  f"with `spacegrid init` (or start its PUs without --wait-for-config)")
        await asyncio.sleep(limits.bootstrap_retry_s)


async def initialize(nats_url: str, proposed: GridConfig, force: bool = False,
                     limits: Limits = DEFAULT_LIMITS, access: Access | None = None) -> tuple[GridConfig, str]:
    """`spacegrid init`: create the space's stream and buckets if needed (as its PUs would) and write `proposed`
    as the grid's configuration. Returns the grid's configuration and what happened: "created", "unchanged" (the
    same was there) or "replaced" (`force`, over one that differed). A differing one without `force`, or with
    another partition count, is refused (ConfigError naming each setting)."""
    from spacegrid.engine.subjects import Names

    transport, coordination = await open_coordination(nats_url, proposed.space, proposed.replicas,
                                                      proposed.heartbeat_timeout_s, limits, "spacegrid-init",
                                                      access=access)
    try:
        had_table = await _answered(coordination.table_written, limits)
        await _answered(lambda: transport.ensure_stream(Names(proposed.space), proposed.replicas,
                                                        2 * limits.append_bytes_max, create=not had_table), limits)
        stored, revision = await _answered(lambda: read(coordination), limits)
        if stored is None:
            if await coordination.create_config(proposed.to_wire()) is not None:
                return proposed, "created"
            stored, revision = await read(coordination)
            assert stored is not None, "create refused, so a configuration exists"
        given = proposed.settings()
        if proposed.durability == NOT_RECORDED:  # init without --fsync says nothing about it
            del given["durability"]
        found = conflicts(stored, given)
        if not found:
            return stored, "unchanged"
        if stored.partitions != proposed.partitions or not force:
            how = ("The partition count can't change." if stored.partitions != proposed.partitions else
                   "Run init with the grid's values, or add --force to replace them (then restart every PU).")
            raise refusal(found, stored, "spacegrid init", how)
        if await coordination.replace_config(proposed.to_wire(), revision) is None:
            raise ConfigError("the grid's configuration changed while init replaced it: run init again")
        return proposed, "replaced"
    finally:
        await transport.close()


async def show(nats_url: str, space: str, limits: Limits = DEFAULT_LIMITS,
               access: Access | None = None) -> GridConfig | None:
    """The grid's configuration as stored (None if it has none), creating nothing."""
    from spacegrid.engine.subjects import Names
    from spacegrid.engine.transport import Transport

    transport = await Transport.connect(nats_url, "spacegrid-config", connect_timeout_s=limits.connect_timeout_s,
                                        jetstream_timeout_s=limits.jetstream_api_timeout_s, access=access)
    try:
        return (await read(await transport.coordination(Names(space))))[0]
    finally:
        await transport.close()
