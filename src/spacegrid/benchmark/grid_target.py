"""The grid as a target: spacegrid's Client against the ticket app, on a LocalGrid started for the run (1 or more
PUs, fsync per its sync_interval) or on a running grid given by its data dir or NATS URL."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from spacegrid.benchmark.history import Expected, ServerState
from spacegrid.benchmark.workload import (
    ACK_BEFORE_FSYNC,
    FSYNC_BEFORE_ACK,
    SEATS_PER_EVENT,
)
from spacegrid.client.client import Client
from spacegrid.errors import ConfigError
from spacegrid.examples.tickets import seat_key
from spacegrid.examples.tickets import space as tickets_space
from spacegrid.inspect import read_status
from spacegrid.launcher import DEFAULT_APP, LocalGrid, read_grid_file
from spacegrid.security.access import Access

GET_CHUNK: Final = 4_000  # keys per get_many (the client does not split a tick's batch by requests_per_message_max)
CREATE_CHUNK: Final = 256  # create_event calls in flight while loading
READY_TIMEOUT_S: Final = 120.0
LOG_TAIL_CHARS: Final = 2000  # of each PU's log, shown when a started grid fails
FSYNC_ALWAYS: Final = "always"  # nats-server's sync_interval that fsyncs before acknowledging


def durability_class(sync_interval_or_config: str | None) -> str:
    """fsync before ack for `always` (a sync_interval, or a grid configuration's durability naming it)."""
    return FSYNC_BEFORE_ACK if FSYNC_ALWAYS in (sync_interval_or_config or "") else ACK_BEFORE_FSYNC


@dataclass(frozen=True)
class GridProcesses:
    """Where the grid runs: its NATS URL, the processes whose CPU counts, what durability it was started with."""

    url: str
    pids: dict[str, int]
    durability: str
    setting: str
    fresh: bool  # started for this run: its whole state is the run's
    pus: int
    access: Access  # the client role's credential (Access(): a grid without authentication)


class GridTarget:
    """The workload through spacegrid's Client; a fresh grid's events are E0..E(N-1), a running grid's get a prefix
    of their own so that nothing there is touched."""

    def __init__(self, grid: GridProcesses, events: int, availability_by_get: bool = False) -> None:
        self.grid = grid
        prefix = "E" if grid.fresh else f"bench-{secrets.token_hex(4)}-E"
        self.event_keys = [f"{prefix}{i}" for i in range(events)]
        self.seat_names = [f"S{i}" for i in range(SEATS_PER_EVENT)]
        self.counters_at: dict[str, dict[str, Any]] = {}
        if availability_by_get:
            self.availability = self._availability_by_get  # type: ignore[method-assign]

    async def open(self) -> None:
        self.client = await Client.connect(tickets_space, self.grid.url, access=self.grid.access)

    async def close(self) -> None:
        await self.client.close()

    async def create_events(self) -> None:
        execute = self.client.execute
        for start in range(0, len(self.event_keys), CREATE_CHUNK):
            results = await asyncio.gather(*(execute("create_event", key, {"seats": SEATS_PER_EVENT, "name": key})
                                             for key in self.event_keys[start:start + CREATE_CHUNK]))
            if not all(r["created"] for r in results):
                raise ConfigError("the grid already had these events: its data dir was not fresh")

    async def availability(self, event: int) -> None:
        await self.client.execute("availability", self.event_keys[event])

    async def _availability_by_get(self, event: int) -> None:
        """A variant (bench/tickets.py's grid1-read): the event record by a plain get, the free count here."""
        found = await self.client.get("events", self.event_keys[event])
        _ = found["seats"] - found["sold"]

    async def reserve(self, event: int, seats: tuple[int, ...], holder: str) -> bool:
        names = self.seat_names
        result = await self.client.execute("reserve", self.event_keys[event],
                                           {"seats": [names[s] for s in seats], "holder": holder})
        return bool(result["ok"])

    async def release(self, event: int, seats: tuple[int, ...], holder: str) -> int:
        names = self.seat_names
        result = await self.client.execute("release", self.event_keys[event],
                                           {"seats": [names[s] for s in seats], "holder": holder})
        return int(result["released"])

    async def window_mark(self, phase: str) -> None:
        stats = self.client.transport.statistics()
        status = await read_status(self.grid.url, tickets_space.name, tickets_space.partitions, access=self.grid.access)
        self.counters_at[phase] = {
            "client": {**self.client.counters, "nats_in_msgs": stats.in_msgs, "nats_out_msgs": stats.out_msgs},
            "pus": {member: {k: info.get(k, 0) for k in ("requests", "messages", "appends", "records")}
                    for member, info in status.members.items()}}

    def pids(self) -> dict[str, int]:
        return self.grid.pids

    def describe(self) -> dict[str, Any]:
        start, end = self.counters_at.get("start"), self.counters_at.get("end")
        counters: dict[str, Any] = {}
        if start and end:
            client = {k: end["client"][k] - start["client"].get(k, 0) for k in end["client"]}
            requests = client.get("requests", 0)
            counters["requests_per_message_out"] = round(requests / max(1, client.get("messages", 0)), 2)
            counters["replies_per_message_in"] = round(requests / max(1, client.get("nats_in_msgs", 0)), 2)
            for member, c1 in end["pus"].items():
                d = {k: v - start["pus"].get(member, {}).get(k, 0) for k, v in c1.items()}
                counters[f"pu {member[-6:]}"] = {"appends": d["appends"],
                                                 "records_per_append": round(d["records"] / max(1, d["appends"]), 2),
                                                 "requests_per_message": round(d["requests"] / max(1, d["messages"]), 2)}
        return {"system": f"spacegrid, {self.grid.pus} PU" + ("s" if self.grid.pus > 1 else ""),
                "durability": self.grid.durability, "setting": self.grid.setting, "counters": counters}

    async def _get_many(self, map_name: str, keys: list[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for start in range(0, len(keys), GET_CHUNK):
            found.update(await self.client.get_many(map_name, keys[start:start + GET_CHUNK]))
        return found

    async def state(self, expected: Expected) -> ServerState:
        events = await self._get_many("events", self.event_keys)
        touched = sorted(expected.touched | expected.uncertain | set(expected.holders))
        keys = [seat_key(self.event_keys[e], self.seat_names[s]) for e, s in touched]
        seats = await self._get_many("seats", keys)
        holders = {seat: (seats[key]["holder"] if key in seats else "<missing>") for seat, key in zip(touched, keys)}
        sold = {i: events[key]["sold"] for i, key in enumerate(self.event_keys) if key in events}
        extra: dict[str, Any] = {"events_found": len(events), "events_found_ok": len(events) == len(self.event_keys)}
        if self.grid.fresh:  # the whole grid is the run's: equal totals mean no untouched seat is held
            sales = await self.client.query("sales")
            extra["sales"] = sales
            extra["sales_ok"] = bool(expected.uncertain) or sales["held_seats"] == len(expected.holders) == sales["sold"]
        return ServerState(holders, sold, extra)


@contextmanager
def started_grid(pus: int, sync_interval: str | None, store: str, keep: bool = False,
                 secure: bool = True) -> Iterator[GridProcesses]:
    """A fresh LocalGrid of the ticket app in a temp dir, ready with `pus` PUs; stopped and removed afterwards."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"spacegrid-bench-{pus}pu-"))
    grid = LocalGrid(data_dir, DEFAULT_APP, store=store, sync_interval=sync_interval, secure=secure)
    try:
        grid.start(pus=pus)
        grid.wait_ready(timeout_s=READY_TIMEOUT_S, members=pus)
        pids = {f"nats-server#{i}": node.pid for i, node in enumerate(grid.nats_nodes)}
        pids.update({f"pu{pu.index}": pu.pid for pu in grid.pus})
        yield GridProcesses(grid.url, pids, durability_class(sync_interval),
                            f"sync_interval={sync_interval or 'default (2m)'}, store={store}", True, pus,
                            grid.client_access)
    except Exception:
        for log_path in sorted((data_dir / "logs").glob("*.log")):  # the data dir goes below: show why first
            tail = log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
            print(f"--- {log_path.name} (last {LOG_TAIL_CHARS} characters)\n{tail}", file=sys.stderr, flush=True)
        raise
    finally:
        grid.stop()
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)


def running_grid(data_dir: Path | None, nats_url: str | None) -> GridProcesses:
    """A grid already running the ticket app: its processes from DATA_DIR/grid.json, else (with --nats only) the
    PUs the grid reports on this host; its durability from the grid's configuration."""
    from spacegrid.config import show

    record = read_grid_file(data_dir) if data_dir is not None and nats_url is None else {}
    if record.get("app", DEFAULT_APP) != DEFAULT_APP:
        raise ConfigError(f"the grid at {data_dir} serves {record['app']}; spacegrid bench needs {DEFAULT_APP}")
    url = nats_url or str(record["nats_url"])
    access = Access.resolve(None, data_dir, "client")
    config = asyncio.run(show(url, tickets_space.name, access=access))
    if config is not None and config.app != DEFAULT_APP:
        raise ConfigError(f"the grid at {url} serves {config.app}; spacegrid bench needs {DEFAULT_APP}")
    status = asyncio.run(read_status(url, tickets_space.name, tickets_space.partitions, access=access))
    if record:
        pids = {f"nats-server#{i}": pid for i, pid in enumerate(record.get("nats_pids", []))}
        pids.update({f"pu{i}": pid for i, pid in enumerate(record.get("pus", []))})
    else:
        host = socket.gethostname()
        pids = {f"pu{i}": int(info["pid"]) for i, info in enumerate(status.members.values())
                if info.get("host") == host and isinstance(info.get("pid"), int) and _alive(int(info["pid"]))}
    durability = config.durability if config is not None else "unknown"
    return GridProcesses(url, pids, durability_class(durability), f"running grid, {durability}", False,
                         len({owner for owner in status.table.owners if owner is not None}), access)


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and pid != os.getpid()
