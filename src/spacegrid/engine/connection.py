"""Connecting to NATS with the options spacegrid relies on, and the event loop policy.

A first connection is bounded: `connect` gives up after `connect_timeout_s`, at once if every server refused (the
grid is down: nothing listens there), and says which of the two it was. Once connected, a lost connection is
retried forever, backing off from NATS_RECONNECT_WAIT_S_MIN to NATS_RECONNECT_WAIT_S_MAX with jitter; the loss
is logged once, then once per NATS_LOST_LOG_INTERVAL_S while it lasts. Deciding when to give up on a lost
connection is the owner's (a PU exits after Limits.pu_nats_lost_exit_s).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client, Server
from nats.errors import StaleConnectionError, UnexpectedEOF

from spacegrid.errors import AccessDenied, GridUnavailable
from spacegrid.security.access import Access
from spacegrid.security.tls import client_context
from spacegrid.limits import (
    NATS_PENDING_BYTES_MAX,
    DEFAULT_LIMITS,
    NATS_LOST_LOG_INTERVAL_S,
    NATS_RECONNECT_JITTER,
    NATS_RECONNECT_WAIT_S_MAX,
    NATS_RECONNECT_WAIT_S_MIN,
)

log = logging.getLogger("spacegrid.nats")


class _TlsEofNoise(logging.Filter):
    """asyncio warns at every close of a TLS connection made by nats-py (its protocol's eof_received returns True,
    which TLS ignores): harmless, and one line per connection in every log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received" not in record.getMessage()


logging.getLogger("asyncio").addFilter(_TlsEofNoise())

Callback = Callable[[], Awaitable[None]]
SERVER_TIMEOUT_S_MAX = 2.0  # one server's TCP connect plus INFO; less when the whole bound is shorter


def install_uvloop() -> bool:
    """Use uvloop where available (measured +13% by the prototype)."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def reconnect_wait_s(attempt: int, rng: random.Random | None = None) -> float:
    """How long to wait before round `attempt` (1, 2, ...) of reconnect attempts through the server pool in one
    outage: the first at once, then 0.25 s doubling up to 2 s, each +-20%."""
    if attempt <= 1:
        return 0.0
    wait_s = min(NATS_RECONNECT_WAIT_S_MAX, NATS_RECONNECT_WAIT_S_MIN * 2 ** (attempt - 2))
    return wait_s * (1.0 + (rng or random).uniform(-NATS_RECONNECT_JITTER, NATS_RECONNECT_JITTER))


_ERRNO_RE = re.compile(r"\[Errno (\d+)\]")


def is_refused(exc: BaseException) -> bool:
    """Nothing listens at the address (as opposed to: no answer, or no route)."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno is not None:
        return exc.errno == errno.ECONNREFUSED
    codes = _ERRNO_RE.findall(str(exc))  # "Multiple exceptions: [Errno 111] ..., [Errno 111] ..." (e.g. ::1 and 127.0.0.1)
    return bool(codes) and all(int(code) == errno.ECONNREFUSED for code in codes)


def grid_down_or_unreachable(url: str, refused: bool, timeout_s: float, cause: BaseException | None) -> GridUnavailable:
    """The error a caller sees when a first connection fails: whether the grid is down or just can't be reached."""
    if refused:
        return GridUnavailable(f"the grid is down: nothing is listening at {url} (connection refused); "
                               f"is the grid up? start it with `spacegrid up --data-dir DIR`, or check --nats")
    detail = f" (last error: {cause!r})" if cause is not None else ""
    return GridUnavailable(f"NATS at {url} is unreachable: no connection within {timeout_s:g} s{detail}; "
                           f"check the network, the host and --nats, or raise --connect-timeout-s")


def is_auth_error(exc: BaseException) -> bool:
    """NATS refused the credentials (or their absence): retrying with the same ones fails the same way."""
    text = str(exc).lower()
    return "authorization violation" in text or "authentication" in text or ("expired" in text and "user" in text)


def is_tls_error(exc: BaseException) -> bool:
    """The TLS handshake failed (an unknown CA, a name the certificate does not carry, TLS on one side only)."""
    return isinstance(exc, ssl.SSLError) or ("tls" in str(exc).lower() and "required" in str(exc).lower())


def access_denied(url: str, access: Access, cause: BaseException) -> AccessDenied:
    if is_tls_error(cause):
        return AccessDenied(f"TLS with NATS at {url} failed ({cause}): pass --tls-ca (or SPACEGRID_TLS_CA) with the CA "
                            f"that signed the servers' certificates; a local grid's is DATA_DIR/secrets/tls/ca.pem")
    if access.anonymous:
        return AccessDenied(f"NATS at {url} refused a connection without credentials ({cause}): the grid requires "
                            f"them; pass --creds FILE (or set SPACEGRID_CREDS), or --data-dir of the grid "
                            f"(DIR/secrets/admin.creds)")
    return AccessDenied(f"NATS at {url} refused {access.describe()} ({cause}): they are not this grid's, or were "
                        f"revoked; use a .creds file the grid issued (`spacegrid auth creds ROLE`)")


def nats_options(access: Access) -> dict[str, Any]:
    """nats-py connect() options for `access` (its .creds file, and its own inbox prefix)."""
    options: dict[str, Any] = {}
    if access.creds_path is not None:
        options["inbox_prefix"] = access.inbox_prefix()  # reads the file: a missing or world-readable one fails here
        options["user_credentials"] = str(access.creds_path)
    if access.tls_ca_path is not None:
        options["tls"] = client_context(access.tls_ca_path, access.tls_cert_path, access.tls_key_path)
    return options


def _breaks_connection(exc: Exception) -> bool:
    return isinstance(exc, (OSError, UnexpectedEOF, StaleConnectionError))


class _Outage:
    """One connection's loss, for backoff and for logging it once and then rarely (never, if `quiet`: another
    connection of the same process says it)."""

    def __init__(self, name: str, quiet: bool = False) -> None:
        self.name = name
        self.quiet = quiet
        self.attempts = 0
        self.lost_at_s: float | None = None
        self.logged_at_s = 0.0
        self.suppressed = 0
        self.cause: Exception | None = None  # the error that broke the connection, told with the loss

    def lost(self) -> None:
        if self.lost_at_s is None:
            self.lost_at_s = self.logged_at_s = time.monotonic()
            self.attempts = 0
            self.suppressed = 0
            cause, self.cause = self.cause, None
            if not self.quiet:
                log.warning("%s: lost the connection to NATS%s; reconnecting with backoff", self.name,
                            f" ({cause})" if cause is not None else "")

    def failed(self, exc: Exception) -> None:
        now = time.monotonic()
        if self.lost_at_s is None:
            if _breaks_connection(exc):  # the disconnect follows at once: said with it
                self.cause = exc
            else:  # an error on a live connection (slow consumer, permissions...): always worth a line
                log.warning("%s: NATS error: %s", self.name, exc)
            return
        if now - self.logged_at_s >= NATS_LOST_LOG_INTERVAL_S and not self.quiet:
            log.warning("%s: NATS still unreachable after %.0f s (%d attempts, last: %s)", self.name,
                        now - self.lost_at_s, self.attempts, exc)
            self.logged_at_s = now
        else:
            self.suppressed += 1

    def back(self) -> None:
        if self.lost_at_s is not None and not self.quiet:
            log.warning("%s: reconnected to NATS after %.1f s (%d attempts)", self.name,
                        time.monotonic() - self.lost_at_s, self.attempts)
        self.lost_at_s = None
        self.attempts = 0


async def connect(url: str, name: str, connect_timeout_s: float = DEFAULT_LIMITS.connect_timeout_s, *,
                  on_disconnect: Callback | None = None, on_reconnect: Callback | None = None,
                  give_up_when_refused: bool = True, access: Access | None = None, quiet: bool = False) -> Client:
    """A connection that, once made, reconnects forever (backing off). The first connection gives up after
    `connect_timeout_s`, or as soon as every server refused if `give_up_when_refused`, raising GridUnavailable
    that says whether the grid is down or unreachable; at once with AccessDenied if NATS refused the credentials
    (`access`, by default from SPACEGRID_* variables). `on_disconnect` / `on_reconnect` run on each loss and
    return of the connection."""
    access = Access.from_env() if access is None else access
    security = nats_options(access)
    servers = url.split(",")
    outage = _Outage(name, quiet)
    first = _FirstAttempts(len(servers))
    nc = Client()

    async def on_error(exc: Exception) -> None:
        if not first.done:
            first.failed(exc)
            return
        outage.failed(exc)

    async def disconnected() -> None:
        if first.done and not nc.is_closed:
            outage.lost()
        if on_disconnect is not None:
            await on_disconnect()

    async def reconnected() -> None:
        outage.back()
        if on_reconnect is not None:
            await on_reconnect()

    def next_server(pool: list[Server], info: Any) -> tuple[Server | None, float]:
        """Every server of the (shuffled) pool once without waiting, then the next round after a backoff: a
        cluster node that died is skipped for a live one at once."""
        outage.lost()  # a reconnect can start without a disconnected callback (e.g. force_reconnect)
        outage.attempts += 1
        round_index, position = divmod(outage.attempts - 1, len(pool))
        return pool[position], reconnect_wait_s(round_index + 1) if position == 0 else 0.0

    server_timeout_s = max(0.1, min(SERVER_TIMEOUT_S_MAX, connect_timeout_s))
    attempt = asyncio.ensure_future(nc.connect(
        servers=servers,
        name=name,
        connect_timeout=server_timeout_s,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=NATS_RECONNECT_WAIT_S_MIN,
        reconnect_to_server_handler=next_server,
        error_cb=on_error,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
        pending_size=NATS_PENDING_BYTES_MAX,
        **security,
    ))
    refused = asyncio.ensure_future(first.all_refused.wait()) if give_up_when_refused else None
    denied = asyncio.ensure_future(first.denied.wait())
    waiting = {attempt, denied} if refused is None else {attempt, refused, denied}
    try:
        await asyncio.wait(waiting, timeout=connect_timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        denied.cancel()
        if refused is not None:
            refused.cancel()
    if attempt.done() and not attempt.cancelled() and attempt.exception() is None:
        first.done = True
        return nc
    attempt.cancel()
    await asyncio.wait({attempt})  # never raises the attempt's error: that is reported below
    await _close_quietly(nc)
    cause = first.last_error
    if attempt.done() and not attempt.cancelled() and attempt.exception() is not None:
        cause = attempt.exception()
    if first.denial is not None or (cause is not None and (is_auth_error(cause) or is_tls_error(cause))):
        raise access_denied(url, access, first.denial or cause)
    raise grid_down_or_unreachable(url, first.all_refused.is_set() or first.only_refusals, connect_timeout_s, cause)


class _FirstAttempts:
    """What the first connection's attempts ran into, server by server."""

    def __init__(self, servers: int) -> None:
        self.servers = servers
        self.done = False
        self.attempts = 0
        self.refusals = 0
        self.last_error: BaseException | None = None
        self.all_refused = asyncio.Event()
        self.denied = asyncio.Event()  # NATS refused the credentials: no point in another attempt
        self.denial: BaseException | None = None  # the first such refusal (later attempts may only see a closed pipe)

    @property
    def only_refusals(self) -> bool:
        return self.attempts > 0 and self.refusals == self.attempts

    def failed(self, exc: BaseException) -> None:
        self.attempts += 1
        self.last_error = exc
        if is_auth_error(exc) or is_tls_error(exc):
            self.denial = self.denial or exc
            self.denied.set()
        if is_refused(exc):
            self.refusals += 1
            if self.only_refusals and self.refusals >= self.servers:
                self.all_refused.set()


async def _close_quietly(nc: Client) -> None:
    try:
        await asyncio.wait_for(nc.close(), 1.0)
    except BaseException:  # noqa: BLE001, S110 - a client that never connected: nothing to close cleanly
        pass
