"""The production store: PostgreSQL through an asyncpg pool; batches as unnest() arrays, the fence under FOR UPDATE."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from spacegrid.errors import SpacegridError, StaleWrite, StoreRejected, StoreUnavailable
from spacegrid.store.base import (SCHEMA_TABLE, SCHEMA_VERSION, DeadLetter, Dialect, Progress, Row, Store,
                                  migration_statements, newest_per_key, quoted)

T = TypeVar("T")
DIALECT = Dialect(key='TEXT COLLATE "C"', blob="BYTEA", time="TIMESTAMPTZ", serial_key="BIGSERIAL PRIMARY KEY")
# Caused by the data itself, so retrying can't help: class 22 data exception (e.g. a NUL in a key), class 23
# integrity constraint, P0001 a trigger's RAISE EXCEPTION, 54000 a key too long for the primary key's index.
REJECTING_SQLSTATES: Final = ("22", "23", "P0001", "54000")
SCHEMA_LOCK: Final = 0x5347_5343_4845_4D41  # pg_advisory_xact_lock key ("SGSCHEMA") serializing schema changes
QUERY_SLACK_S: Final = 2.0  # the client gives up this long after the server's statement_timeout


def redact(dsn: str) -> str:
    """The DSN for display: the password (in the user part or a password= parameter) replaced by ***."""
    parts = urlsplit(dsn)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if ":" in userinfo:
        parts = parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***{at}{hostport}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(name == "password" for name, _ in query):
        parts = parts._replace(query=urlencode([(n, "***" if n == "password" else v) for n, v in query], safe="*"))
    return urlunsplit(parts)


def classify(exc: Exception, where: str) -> SpacegridError:
    """StoreRejected when the data caused it, StoreUnavailable for everything else (retry later): connection
    refused or lost, timeouts, serialization failures and deadlocks (40xxx), a missing table (42P01), shutdown."""
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        if state.startswith(REJECTING_SQLSTATES):
            return StoreRejected(f"PostgreSQL rejected the data ({state}): {exc}")
        return StoreUnavailable(f"PostgreSQL at {where} ({state}): {exc}")
    return StoreUnavailable(f"PostgreSQL at {where}: {type(exc).__name__}: {exc}")


class PostgresStore(Store):
    """statement_timeout_s bounds every statement on the server (a lock wait included), each connection attempt,
    and a transaction left idle by a vanished client (which would hold its partition's progress lock)."""

    def __init__(self, dsn: str, space: str, maps: Sequence[str], pool_size: int = 4,
                 statement_timeout_s: float = 10.0) -> None:
        assert pool_size >= 1 and statement_timeout_s > 0
        super().__init__(space, maps)
        self.dsn = dsn
        self.url = redact(dsn)
        self.concurrency = pool_size
        self.statement_timeout_s = statement_timeout_s
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()

    def _server_settings(self) -> dict[str, str]:
        """Timeouts the DSN's query parameters don't set already."""
        given = {name for name, _ in parse_qsl(urlsplit(self.dsn).query)}
        timeout_ms = str(int(self.statement_timeout_s * 1000))
        settings = {"statement_timeout": timeout_ms, "idle_in_transaction_session_timeout": timeout_ms,
                    "application_name": f"spacegrid-{self.tables.space}"[:63]}
        return {name: value for name, value in settings.items() if name not in given}

    async def _with(self, body: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run body on a pooled connection, sorting failures into rejected (the data) and unavailable."""
        self._check_open()
        try:
            async with self._pool_lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self.dsn, min_size=1, max_size=self.concurrency, timeout=self.statement_timeout_s,
                        command_timeout=self.statement_timeout_s + QUERY_SLACK_S,
                        server_settings=self._server_settings())
            async with self._pool.acquire(timeout=self.statement_timeout_s) as connection:
                return await body(connection)
        except (SpacegridError, AssertionError):
            raise
        except Exception as exc:
            raise classify(exc, self.url) from exc

    async def open(self) -> None:
        async def migrate(db: asyncpg.Connection) -> None:
            async with db.transaction():
                # one opener at a time, all spaces: concurrent CREATE ... IF NOT EXISTS of one name can collide
                await db.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
                await db.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (space TEXT PRIMARY KEY, "
                                 "version INTEGER NOT NULL)")
                found = await db.fetchval(f"SELECT version FROM {SCHEMA_TABLE} WHERE space = $1", self.tables.space)  # nosec B608  # SCHEMA_TABLE is a constant, values bound
                for statement in migration_statements(self.tables, DIALECT, 0 if found is None else int(found)):
                    await db.execute(statement)
                await db.execute(f"INSERT INTO {SCHEMA_TABLE} (space, version) VALUES ($1, $2) ON CONFLICT (space) "  # nosec B608  # SCHEMA_TABLE is a constant, values bound
                                 "DO UPDATE SET version = EXCLUDED.version", self.tables.space, SCHEMA_VERSION)

        await self._with(migrate)

    async def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), self.statement_timeout_s)
        except Exception:  # connections busy or broken: cut them
            pool.terminate()

    async def progress(self, partition: int) -> Progress:
        found = await self._with(lambda db: db.fetchrow(
            f"SELECT lsn, seq FROM {quoted(self.tables.progress)} WHERE partition = $1", partition))  # nosec B608  # identifiers via store.base.quoted, values bound
        return Progress(0, 0) if found is None else Progress(int(found["lsn"]), int(found["seq"]))

    async def log_position(self, partitions: int) -> int:
        found = await self._with(lambda db: db.fetchrow(
            f"SELECT count(*) AS n, min(seq) AS low FROM {quoted(self.tables.progress)} WHERE partition < $1",  # nosec B608  # identifiers via store.base.quoted, values bound
            partitions))
        return 0 if found is None or int(found["n"]) < partitions else int(found["low"])

    async def persist(self, partition: int, rows: Sequence[Row], lsn: int, seq: int, advance: bool) -> None:
        assert lsn >= 0 and seq >= 0
        progress = quoted(self.tables.progress)
        lock = f"SELECT greatest(lsn, claimed) FROM {progress} WHERE partition = $1 FOR UPDATE"  # nosec B608  # identifiers via store.base.quoted, values bound

        async def persist(db: asyncpg.Connection) -> None:
            async with db.transaction():
                stored = await db.fetchval(lock, partition)
                if stored is None:  # the partition's first persist: create its row, then lock it
                    await db.execute(f"INSERT INTO {progress} (partition, lsn, seq, updated_at) "  # nosec B608  # identifiers via store.base.quoted, values bound
                                     "VALUES ($1, 0, 0, now()) ON CONFLICT (partition) DO NOTHING", partition)
                    stored = await db.fetchval(lock, partition)
                if stored > lsn:
                    raise StaleWrite(f"partition {partition}: the store holds or was claimed up to lsn {stored}, "
                                     f"past this snapshot's {lsn}")
                await db.execute(f"UPDATE {progress} SET claimed = $2 WHERE partition = $1", partition, lsn)  # nosec B608  # identifiers via store.base.quoted, values bound
                await self._write(db, partition, rows, guarded=True)
                if advance:
                    status = await db.execute(f"UPDATE {progress} SET lsn = $2, seq = $3, updated_at = now() "  # nosec B608  # identifiers via store.base.quoted, values bound
                                              "WHERE partition = $1 AND lsn <= $2", partition, lsn, seq)
                    assert status == "UPDATE 1", "the position only moves forward"

        await self._with(persist)

    async def _write(self, db: asyncpg.Connection, partition: int, rows: Sequence[Row], guarded: bool) -> None:
        """Upsert and delete rows, one statement per map and kind; guarded: only where the stored version is older."""
        for map_name, (upserts, deletes) in newest_per_key(rows).items():
            table = quoted(self.tables.map_table(map_name))
            if upserts:
                await db.execute(
                    f"INSERT INTO {table} AS t (partition, key, value, version, updated_at) "  # nosec B608  # identifiers via store.base.quoted, values bound
                    "SELECT $1, u.key, u.value, u.version, now() "
                    "FROM unnest($2::text[], $3::bytea[], $4::bigint[]) AS u(key, value, version) "
                    "ON CONFLICT (key) DO UPDATE SET partition = EXCLUDED.partition, value = EXCLUDED.value, "
                    "version = EXCLUDED.version, updated_at = EXCLUDED.updated_at"
                    + (" WHERE t.version < EXCLUDED.version" if guarded else ""),
                    partition, [r.key for r in upserts], [r.value for r in upserts], [r.version for r in upserts])
            if deletes:
                await db.execute(
                    f"DELETE FROM {table} AS t USING unnest($1::text[], $2::bigint[]) AS d(key, version) "  # nosec B608  # identifiers via store.base.quoted, values bound
                    "WHERE t.key = d.key" + (" AND t.version < d.version" if guarded else ""),
                    [r.key for r in deletes], [r.version for r in deletes])

    async def dead_letter(self, partition: int, rows: Sequence[Row], error: str) -> None:
        async def insert(db: asyncpg.Connection) -> None:
            async with db.transaction():
                await db.executemany(
                    f"INSERT INTO {quoted(self.tables.dead_letters)} (map, key, partition, value, version, error, "  # nosec B608  # identifiers via store.base.quoted, values bound
                    "created_at) VALUES ($1, $2, $3, $4, $5, $6, now())",
                    [(r.map, _storable(r.key), partition, r.value, r.version, _storable(error)) for r in rows])

        await self._with(insert)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        found = await self._with(lambda db: db.fetch(
            "SELECT id, map, key, partition, value, version, error, extract(epoch FROM created_at) AS at "  # nosec B608  # identifiers via store.base.quoted, values bound
            f"FROM {quoted(self.tables.dead_letters)} ORDER BY id LIMIT $1", limit))
        return [DeadLetter(int(r["id"]), r["map"], r["key"], int(r["partition"]),
                           None if r["value"] is None else bytes(r["value"]), int(r["version"]), r["error"],
                           float(r["at"])) for r in found]

    async def dead_letter_count(self) -> int:
        return await self._count(f"SELECT count(*) FROM {quoted(self.tables.dead_letters)}")  # nosec B608  # identifiers via store.base.quoted, values bound

    async def row_count(self, map_name: str) -> int:
        return await self._count(f"SELECT count(*) FROM {quoted(self.tables.map_table(map_name))}")  # nosec B608  # identifiers via store.base.quoted, values bound

    async def _count(self, sql: str) -> int:
        return int(await self._with(lambda db: db.fetchval(sql)))

    async def load_page(self, partition: int, map_name: str, after_key: str, limit: int) -> list[Row]:
        table = quoted(self.tables.map_table(map_name))
        found = await self._with(lambda db: db.fetch(
            f"SELECT key, value, version FROM {table} WHERE partition = $1 AND key > $2 ORDER BY key LIMIT $3",  # nosec B608  # identifiers via store.base.quoted, values bound
            partition, after_key, limit))
        return [Row(map_name, r["key"], bytes(r["value"]), int(r["version"])) for r in found]

    async def load_key(self, map_name: str, key: str) -> Row | None:
        table = quoted(self.tables.map_table(map_name))
        found = await self._with(lambda db: db.fetchrow(f"SELECT value, version FROM {table} WHERE key = $1", key))  # nosec B608  # identifiers via store.base.quoted, values bound
        return None if found is None else Row(map_name, key, bytes(found["value"]), int(found["version"]))

    async def versions(self, partition: int, map_name: str) -> list[tuple[str, int]]:
        table = quoted(self.tables.map_table(map_name))
        found = await self._with(lambda db: db.fetch(  # keys are COLLATE "C": UTF-8 byte order, i.e. code points
            f"SELECT key, version FROM {table} WHERE partition = $1 ORDER BY key", partition))  # nosec B608  # identifiers via store.base.quoted, values bound
        return [(r["key"], int(r["version"])) for r in found]

    async def digest(self, partition: int, map_name: str) -> tuple[int, str]:
        """digest_of(versions) computed by the server: one row comes back, however many the partition holds."""
        table = quoted(self.tables.map_table(map_name))
        found = await self._with(lambda db: db.fetchrow(
            "SELECT count(*) AS n, encode(sha256(convert_to(coalesce(string_agg(key || E'\\t' || version::text "  # nosec B608  # identifiers via store.base.quoted, values bound
            f"|| E'\\n', '' ORDER BY key), ''), 'UTF8')), 'hex') AS digest FROM {table} WHERE partition = $1",
            partition))
        assert found is not None
        return int(found["n"]), str(found["digest"])

    async def write_rows(self, partition: int, rows: Sequence[Row]) -> None:
        async def write(db: asyncpg.Connection) -> None:
            async with db.transaction():
                await self._write(db, partition, rows, guarded=False)

        await self._with(write)

    async def delete_keys(self, partition: int, map_name: str, keys: Sequence[str]) -> None:
        table = quoted(self.tables.map_table(map_name))
        await self._with(lambda db: db.execute(f"DELETE FROM {table} WHERE partition = $1 AND key = ANY($2::text[])",  # nosec B608  # identifiers via store.base.quoted, values bound
                                               partition, list(keys)))


def _storable(text: str) -> str:
    """Text PostgreSQL can hold (NUL is the one character TEXT refuses), for the dead-letter table."""
    return text.replace("\x00", "\\x00")
