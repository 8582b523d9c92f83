"""Running one PU as an OS process: the grid's configuration, signals, the handler time limit, bounded stops, and a
clean exit.

The process exits
- after SIGTERM / SIGINT, within Limits.pu_stop_timeout_s: hand-off (`leave`) if NATS is reachable, a plain
  `stop` if not; a second signal, or a stop that overruns its bound by PU_STOP_KILL_GRACE_S, exits at once;
- non-zero (GridUnavailable) once NATS has been unreachable for Limits.pu_nats_lost_exit_s, start-up included;
- at once (LIFELINE_EXIT_CODE) when the launcher that started it dies (its lifeline pipe reads EOF).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spacegrid.config import (GridConfig, conflicts, open_coordination, read_store_password, refusal, settle,
                              wait_config, with_store_password, written_by)
from spacegrid.errors import GridUnavailable
from spacegrid.lifeline import (
    exit_because_launcher_died,
    lifeline_fd_from_env,
    watch_lifeline,
)
from spacegrid.limits import (
    DEFAULT_LIMITS,
    PU_NATS_CHECK_INTERVAL_S,
    PU_STOP_HANDOFF_SHARE,
    PU_STOP_KILL_GRACE_S,
    Limits,
)
from spacegrid.observability.prometheus import serve_metrics
from spacegrid.space import Space
from spacegrid.store import open_store
from spacegrid.unit.pu import ProcessingUnit
from spacegrid.unit.timelimit import TimeLimit
from spacegrid.security.access import Access

ADVERTISE_HOST_ENV = "SPACEGRID_ADVERTISE_HOST"
log = logging.getLogger("spacegrid.pu")

STOP_EXIT_CODE_FORCED = 75  # the stop overran its bound, or a second signal came: exited without finishing


@dataclass(frozen=True, slots=True)
class PuOptions:
    """What is this PU process's own, not the grid's: its metrics port, where its store password is, its bounds."""

    metrics_port: int | None = None  # None: a free port, if the grid serves metrics
    store_password: str | None = None  # given in its --store URL
    store_password_file: Path | None = None
    data_dir: Path | None = None  # DATA_DIR/store.password is looked for here
    base_limits: Limits = DEFAULT_LIMITS  # its own bounds (stop, NATS loss, connect); the grid's are set over them
    create_config: bool = True  # False: wait for the grid's configuration (its launcher writes it) instead
    access: Access | None = None  # its credential (None: from SPACEGRID_* variables)
    member_id: str | None = None  # the member its credential was minted for (None: a new one)


async def join_grid(space: Space, app: str, nats_url: str, given: Mapping[str, Any], options: PuOptions) -> None:
    """Run a PU with the grid's configuration: read it (or, on a grid without one, write this PU's settings as the
    grid's, create-only), refuse explicit settings (`given`, by GridConfig field) that conflict, then run_pu."""
    _watch_launcher()
    grid = await grid_config_for_pu(space, app, nats_url, given, options.base_limits, options.create_config,
                                    options.access)
    password = options.store_password or read_store_password(options.store_password_file, options.data_dir)
    store_url = None if grid.store_url is None else with_store_password(grid.store_url, password)
    metrics = (grid.metrics_host, options.metrics_port or 0) if grid.metrics else None
    print(f"joining grid {grid.space!r} (configuration written by {grid.written_by or 'an earlier spacegrid'}):"
          f" store {grid.store}{' (password given)' if password and store_url != grid.store_url else ''}, "
          f"replicas {grid.replicas}, lease {grid.lease_s:g} s, metrics {'on' if grid.metrics else 'off'}", flush=True)
    await run_pu(space, nats_url, grid.limits(options.base_limits), grid.replicas, metrics, store_url,
                 options.access, options.member_id)


async def grid_config_for_pu(space: Space, app: str, nats_url: str, given: Mapping[str, Any],
                             base_limits: Limits, create: bool = True, access: Access | None = None) -> GridConfig:
    """The grid's configuration, checked against what this PU was given explicitly (ConfigError naming each
    setting that differs). Without `create`, waits for it (bounded) instead of writing its own."""
    given = {"app": app, **given}
    proposed = GridConfig(space=space.name, partitions=space.partitions, written_by=written_by("spacegrid pu"),
                          **given)
    transport, coordination = await open_coordination(nats_url, space.name, proposed.replicas,
                                                      proposed.heartbeat_timeout_s, base_limits, "spacegrid-pu-config",
                                                      create, access)
    try:
        if create:
            grid, _ = await settle(coordination, proposed, base_limits)
        else:
            grid = await wait_config(coordination, base_limits)
    finally:
        await transport.close()
    found = conflicts(grid, given)
    if found:
        raise refusal(found, grid, "this PU", "Start it without those options: it takes the grid's. To change the "
                      "grid's, run `spacegrid init --force` with the new values, then restart every PU.")
    return grid


def _watch_launcher() -> None:
    """Exit at once when the launcher that started this process dies (once per process)."""
    global _watching_launcher
    lifeline_fd = lifeline_fd_from_env()
    if lifeline_fd is not None and not _watching_launcher:
        _watching_launcher = True
        watch_lifeline(lifeline_fd, exit_because_launcher_died)


_watching_launcher = False


def advertised_host(bound_host: str) -> str:
    """The address others reach this PU's metrics at: the bound one, or for a wildcard (a pod binds 0.0.0.0)
    SPACEGRID_ADVERTISE_HOST (a pod's IP from the downward API) or the host name."""
    if bound_host not in ("0.0.0.0", "::", ""):  # nosec B104  # compared with, to advertise another address
        return bound_host
    return os.environ.get(ADVERTISE_HOST_ENV) or socket.gethostname()


async def run_pu(space: Space, nats_url: str, limits: Limits, replicas: int = 1,
                 metrics: tuple[str, int] | None = None, store_url: str | None = None, access: Access | None = None,
                 member_id: str | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then leave the grid gracefully (bounded). `metrics` (host, port; port 0: a
    free one) starts a Prometheus endpoint; `store_url` puts a durable store behind the grid. Raises
    GridUnavailable when NATS stays unreachable longer than `limits.pu_nats_lost_exit_s`."""
    _watch_launcher()
    store = None if store_url is None else open_store(store_url, space.name, list(space.maps), limits)
    pu = ProcessingUnit(space, nats_url, limits, replicas, member_id, time_limit=TimeLimit(limits.handler_time_limit_s),
                        store=store, access=access)
    if metrics is not None:
        host, port = metrics
        port = serve_metrics(lambda: pu.last_info, host, port, health=pu.health)
        pu.metrics_url = f"http://{advertised_host(host)}:{port}/metrics"
    stop = asyncio.Event()
    _install_signal_handlers(stop, limits)
    watch = NatsWatch(pu)
    starting = asyncio.ensure_future(pu.start())
    lost = asyncio.ensure_future(watch.wait_lost(limits.pu_nats_lost_exit_s))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({starting, stopped, lost}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # a failed start (e.g. GridUnavailable: NATS down) ends the process here
            print(f"PU {pu.member_id} up (pid {os.getpid()})", flush=True)
            await asyncio.wait({stopped, lost}, return_when=asyncio.FIRST_COMPLETED)
        if lost.done():
            await _stop_without_nats(pu, starting, limits)
            raise GridUnavailable(f"PU {pu.member_id} could not reach NATS at {nats_url} for "
                                  f"{limits.pu_nats_lost_exit_s:g} s (--nats-lost-exit-s): exiting; "
                                  f"restart it once NATS is back")
        if not starting.done() or watch.disconnected_for_s() > 0:
            log.warning("PU %s stopping %s", pu.member_id,
                        "before it finished starting" if not starting.done() else "without hand-off: NATS is unreachable")
            await _stop_without_nats(pu, starting, limits)
            return
        log.info("PU %s leaving the grid (hand-off, at most %.0f s)", pu.member_id, limits.pu_stop_timeout_s)
        await _leave_bounded(pu, limits)
    finally:
        for task in (starting, lost, stopped):
            task.cancel()


class NatsWatch:
    """How long the PU's NATS connection has been lost: from the PU's transport once it has one
    (`transport.disconnected_for_s()`), else from its connection's state, sampled."""

    def __init__(self, pu: ProcessingUnit) -> None:
        self.pu = pu
        self._lost_since_s: float | None = time.monotonic()  # not connected yet

    def disconnected_for_s(self) -> float:
        transport: Any = getattr(self.pu, "transport", None)
        if transport is not None and hasattr(transport, "disconnected_for_s"):
            return float(transport.disconnected_for_s())
        nc: Any = getattr(self.pu, "nc", None)
        now = time.monotonic()
        if nc is not None and nc.is_connected:
            self._lost_since_s = None
            return 0.0
        if self._lost_since_s is None:
            self._lost_since_s = now
        return now - self._lost_since_s

    async def wait_lost(self, bound_s: float) -> None:
        """Return once the connection has been lost (or never made) for `bound_s`."""
        while self.disconnected_for_s() < bound_s:
            await asyncio.sleep(PU_NATS_CHECK_INTERVAL_S)


def _install_signal_handlers(stop: asyncio.Event, limits: Limits) -> None:
    """First SIGTERM/SIGINT: stop, with a watchdog that exits the process if the stop overruns its bound. Second:
    exit at once."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            _exit_now(f"second {signal.Signals(signum).name}: exiting without finishing the stop")
        stop.set()
        bound_s = limits.pu_stop_timeout_s + PU_STOP_KILL_GRACE_S
        timer = threading.Timer(bound_s, _exit_now, (f"the stop took over {bound_s:g} s: exiting",))
        timer.daemon = True
        timer.start()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


def _exit_now(reason: str) -> None:
    print(f"spacegrid pu (pid {os.getpid()}): {reason}", file=sys.stderr, flush=True)
    os._exit(STOP_EXIT_CODE_FORCED)


async def _leave_bounded(pu: ProcessingUnit, limits: Limits) -> None:
    """Hand everything off and stop, within limits.pu_stop_timeout_s; past it, a plain stop with what is left."""
    deadline_s = time.monotonic() + limits.pu_stop_timeout_s
    try:
        handoff_timeout_s = min(limits.handoff_timeout_s, PU_STOP_HANDOFF_SHARE * limits.pu_stop_timeout_s)
        await asyncio.wait_for(pu.leave(handoff_timeout_s), limits.pu_stop_timeout_s)
        return
    except TimeoutError:
        log.warning("PU %s: hand-off not done within %.0f s (--stop-timeout-s); stopping", pu.member_id,
                    limits.pu_stop_timeout_s)
    await _stop_bounded(pu, max(0.1, deadline_s - time.monotonic()))


async def _stop_without_nats(pu: ProcessingUnit, starting: asyncio.Future[None], limits: Limits) -> None:
    if not starting.done():
        starting.cancel()
        await asyncio.wait({starting})
    await _stop_bounded(pu, limits.pu_stop_timeout_s)


async def _stop_bounded(pu: ProcessingUnit, timeout_s: float) -> None:
    try:
        await asyncio.wait_for(pu.stop(), timeout_s)
    except TimeoutError:
        log.warning("PU %s: stop not done within %.1f s; exiting anyway", pu.member_id, timeout_s)
    except Exception as exc:  # noqa: BLE001 - a stop that fails (NATS gone, store gone) still ends the process
        log.warning("PU %s: stop failed (%s); exiting anyway", pu.member_id, exc)
