"""PostgreSQL as a target: asyncpg, one statement per operation, synchronous_commit on or off per connection, in a
fresh schema of its own that is dropped afterwards; CPU of its backends found by pg_backend_pid()."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

from spacegrid.benchmark.history import Expected, ServerState
from spacegrid.benchmark.measure import GROUP, SHARED
from spacegrid.benchmark.workload import (
    ACK_BEFORE_FSYNC,
    FSYNC_BEFORE_ACK,
    SEATS_PER_EVENT,
)

COMMAND_TIMEOUT_S: Final = 30.0
CONNECT_TIMEOUT_S: Final = 10.0
SETTINGS_SHOWN: Final = ("server_version", "synchronous_commit", "fsync", "shared_buffers", "wal_level")
POOL_IMPLS: Final = ("list", "asyncpg")


def statements(schema: str) -> dict[str, str]:
    """The three operations, one statement each; reserve is all or nothing (it locks the free seats and takes them
    only if it got them all)."""
    return {
        "availability": f"SELECT seats - sold AS free, sold, seats FROM {schema}.events WHERE id = $1",  # nosec B608  # schema bench_<hex> made here, values bound
        "reserve": f"""
WITH free AS (
    SELECT seat FROM {schema}.seats WHERE event_id = $1 AND seat = ANY($2::int[]) AND holder IS NULL
    FOR UPDATE SKIP LOCKED
), decision AS (
    SELECT count(*) = cardinality($2::int[]) AS ok FROM free
), taken AS (
    UPDATE {schema}.seats s SET holder = $3
    FROM decision WHERE decision.ok AND s.event_id = $1 AND s.seat IN (SELECT seat FROM free)
    RETURNING 1
), counted AS (
    UPDATE {schema}.events e SET sold = e.sold + cardinality($2::int[])
    FROM decision WHERE decision.ok AND e.id = $1
    RETURNING 1
)
SELECT ok FROM decision""",  # nosec B608  # schema bench_<hex> made here, values bound
        "release": f"""
WITH freed AS (
    UPDATE {schema}.seats SET holder = NULL WHERE event_id = $1 AND seat = ANY($2::int[]) AND holder = $3
    RETURNING 1
), counted AS (
    UPDATE {schema}.events SET sold = sold - (SELECT count(*) FROM freed)
    WHERE id = $1 AND (SELECT count(*) FROM freed) > 0
    RETURNING 1
)
SELECT count(*) FROM freed""",  # nosec B608  # schema bench_<hex> made here, values bound
    }


class ConnectionList:
    """The smallest pool: open connections taken and given back without any query or timer (asyncpg's Pool sends a
    reset query on every release: one more round trip per operation)."""

    def __init__(self, connections: list[Any]) -> None:
        self.connections = connections
        self.free = list(connections)
        self.waiters: list[asyncio.Future[Any]] = []

    async def take(self) -> Any:
        if self.free:
            return self.free.pop()
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return await waiter

    def give(self, connection: Any) -> None:
        while self.waiters:
            waiter = self.waiters.pop(0)
            if not waiter.done():
                waiter.set_result(connection)
                return
        self.free.append(connection)

    async def _call(self, method: str, query: str, *args: Any) -> Any:
        connection = await self.take()
        try:
            return await getattr(connection, method)(query, *args)
        finally:
            self.give(connection)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._call("fetchval", query, *args)

    async def fetchrow(self, query: str, *args: Any) -> Any:
        return await self._call("fetchrow", query, *args)

    async def close(self) -> None:
        for connection in self.connections:
            await connection.close()


async def _no_reset(connection: Any) -> None:
    return None


class PgTarget:
    """asyncpg straight to PostgreSQL: `pool_size` connections, each statement its own implicit transaction."""

    def __init__(self, dsn: str, events: int, synchronous_commit: bool, pool_size: int, pool_impl: str = "list") -> None:
        self.dsn = dsn
        self.events = events
        self.synchronous_commit = synchronous_commit
        self.pool_size = pool_size
        self.pool_impl = pool_impl
        self.schema = f"bench_{secrets.token_hex(4)}"
        self.sql = statements(self.schema)
        self.backend_pids: list[int] = []
        self.aux_pids: dict[str, int] = {}
        self.settings: dict[str, str] = {}

    async def open(self) -> None:
        import asyncpg

        server_settings = {"synchronous_commit": "on" if self.synchronous_commit else "off"}
        if self.pool_impl == "asyncpg":  # no reset on release: this workload keeps no session state
            self.pool: Any = await asyncpg.create_pool(self.dsn, min_size=self.pool_size, max_size=self.pool_size,
                                                       command_timeout=COMMAND_TIMEOUT_S, max_queries=2**62,
                                                       reset=_no_reset, server_settings=server_settings,
                                                       timeout=CONNECT_TIMEOUT_S)
            connections = [await self.pool.acquire() for _ in range(self.pool_size)]
        else:
            self.pool = ConnectionList([])
            try:
                for _ in range(self.pool_size):
                    self.pool.connections.append(await asyncpg.connect(
                        self.dsn, command_timeout=COMMAND_TIMEOUT_S, timeout=CONNECT_TIMEOUT_S,
                        server_settings=server_settings))
            except BaseException:
                await self.pool.close()  # measure() closes only what opened
                raise
            self.pool.free = list(self.pool.connections)
            connections = list(self.pool.connections)
        try:
            self.backend_pids = [await c.fetchval("SELECT pg_backend_pid()") for c in connections]
            rows = await connections[0].fetch("SELECT pid, backend_type FROM pg_stat_activity "
                                              "WHERE backend_type <> 'client backend'")
            self.aux_pids = {row["backend_type"]: row["pid"] for row in rows}
            self.settings = {name: await connections[0].fetchval(f"SHOW {name}") for name in SETTINGS_SHOWN}
        finally:
            if self.pool_impl == "asyncpg":
                for c in connections:
                    await self.pool.release(c)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A connection of the pool (either kind), for set-up, the check and clean-up."""
        if self.pool_impl == "asyncpg":
            async with self.pool.acquire() as connection:
                yield connection
            return
        connection = await self.pool.take()
        try:
            yield connection
        finally:
            self.pool.give(connection)

    async def close(self) -> None:
        try:
            async with self._connection() as c:
                await c.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        finally:
            await self.pool.close()

    async def create_events(self) -> None:
        async with self._connection() as c:
            await _load(c, self.schema, self.events)

    async def availability(self, event: int) -> None:
        await self.pool.fetchrow(self.sql["availability"], event)

    async def reserve(self, event: int, seats: tuple[int, ...], holder: str) -> bool:
        return bool(await self.pool.fetchval(self.sql["reserve"], event, list(seats), holder))

    async def release(self, event: int, seats: tuple[int, ...], holder: str) -> int:
        return int(await self.pool.fetchval(self.sql["release"], event, list(seats), holder))

    async def window_mark(self, phase: str) -> None:
        return None

    def pids(self) -> dict[str, int]:
        pids = {f"pg-backend{GROUP}{i}": pid for i, pid in enumerate(self.backend_pids)}
        pids.update({f"{SHARED}pg-aux{GROUP}{kind}": pid for kind, pid in self.aux_pids.items()})
        return pids

    def describe(self) -> dict[str, Any]:
        fsync = self.settings.get("fsync") == "on"
        return {"system": "PostgreSQL (asyncpg, one statement per operation)",
                "durability": FSYNC_BEFORE_ACK if self.synchronous_commit and fsync else ACK_BEFORE_FSYNC,
                "setting": f"synchronous_commit={'on' if self.synchronous_commit else 'off'}, fsync={self.settings.get('fsync')}",
                "settings": self.settings, "pool": {"size": self.pool_size, "impl": self.pool_impl}}

    async def state(self, expected: Expected) -> ServerState:
        async with self._connection() as c:
            held = await c.fetch(f"SELECT event_id, seat, holder FROM {self.schema}.seats WHERE holder IS NOT NULL")  # nosec B608  # schema bench_<hex> made here, values bound
            sold_rows = await c.fetch(f"SELECT id, sold FROM {self.schema}.events")  # nosec B608  # schema bench_<hex> made here, values bound
            duplicates = await c.fetchval(f"SELECT count(*) FROM (SELECT event_id, seat FROM {self.schema}.seats "  # nosec B608  # schema bench_<hex> made here, values bound
                                          f"GROUP BY 1, 2 HAVING count(*) > 1) d")
        holders: dict[tuple[int, int], str | None] = {seat: None for seat in expected.touched}
        holders.update({(row["event_id"], row["seat"]): row["holder"] for row in held})
        return ServerState(holders, {row["id"]: row["sold"] for row in sold_rows},
                           {"duplicate_seat_rows": duplicates, "no_duplicate_rows_ok": duplicates == 0})


async def _load(c: Any, schema: str, events: int) -> None:
    await c.execute(f"CREATE SCHEMA {schema}")
    await c.execute(f"CREATE TABLE {schema}.events (id int PRIMARY KEY, name text NOT NULL, seats int NOT NULL, "
                    f"sold int NOT NULL) WITH (fillfactor = 80)")
    await c.execute(f"CREATE TABLE {schema}.seats (event_id int NOT NULL, seat int NOT NULL, holder text, "
                    f"PRIMARY KEY (event_id, seat)) WITH (fillfactor = 80)")
    await c.copy_records_to_table("events", schema_name=schema, columns=["id", "name", "seats", "sold"],
                                  records=[(i, f"E{i}", SEATS_PER_EVENT, 0) for i in range(events)])
    await c.copy_records_to_table("seats", schema_name=schema, columns=["event_id", "seat"],
                                  records=((e, s) for e in range(events) for s in range(SEATS_PER_EVENT)))
    await c.execute(f"VACUUM ANALYZE {schema}.events")
    await c.execute(f"VACUUM ANALYZE {schema}.seats")
