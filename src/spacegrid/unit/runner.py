"""Running one PU as an OS process: signals, the handler time limit, and a clean exit."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from spacegrid.limits import Limits
from spacegrid.observability.prometheus import serve_metrics
from spacegrid.space import Space
from spacegrid.store import open_store
from spacegrid.unit.pu import ProcessingUnit
from spacegrid.unit.timelimit import TimeLimit

log = logging.getLogger("spacegrid.pu")


async def run_pu(space: Space, nats_url: str, limits: Limits, replicas: int = 1,
                 metrics: tuple[str, int] | None = None, store_url: str | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then leave the grid gracefully. `metrics` (host, port; port 0: a free one)
    starts a Prometheus endpoint; `store_url` puts a durable store behind the grid."""
    store = None if store_url is None else open_store(store_url, space.name, list(space.maps), limits)
    pu = ProcessingUnit(space, nats_url, limits, replicas, time_limit=TimeLimit(limits.handler_time_limit_s),
                        store=store)
    if metrics is not None:
        host, port = metrics
        port = serve_metrics(lambda: pu.last_info, host, port)
        pu.metrics_url = f"http://{host}:{port}/metrics"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await pu.start()
    print(f"PU {pu.member_id} up (pid {os.getpid()})", flush=True)
    await stop.wait()
    log.info("PU %s stopping", pu.member_id)
    await pu.leave()
