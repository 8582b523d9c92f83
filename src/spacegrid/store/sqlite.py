"""The embedded store: one SQLite file in WAL mode, driven from one worker thread so the event loop never blocks.

Durability: synchronous=NORMAL in WAL mode. A committed transaction survives a crash of the process; on a power
loss or OS crash the last transactions may roll back. The changelog still holds every write the store lacks, and
the progress row rolls back with the rows, so the next owner persists them again."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

from spacegrid.errors import SpacegridError, StaleWrite, StoreRejected, StoreUnavailable
from spacegrid.core.rows import digest_of
from spacegrid.store.base import (SCHEMA_TABLE, SCHEMA_VERSION, DeadLetter, Dialect, Progress, Row, Store,
                                  migration_statements, newest_per_key, quoted)

T = TypeVar("T")
DIALECT = Dialect(key="TEXT", blob="BLOB", time="REAL", serial_key="INTEGER PRIMARY KEY AUTOINCREMENT")


class SqliteStore(Store):
    """Several PU processes may share the file: every write transaction is BEGIN IMMEDIATE, so writers queue on
    the file's lock for up to busy_timeout_s (then StoreUnavailable: "database is locked")."""

    concurrency = 1

    def __init__(self, path: str | Path, space: str, maps: Sequence[str], busy_timeout_s: float = 10.0) -> None:
        assert busy_timeout_s > 0
        super().__init__(space, maps)
        self.path = Path(path)
        self.url = f"sqlite://{self.path}" if self.path.is_absolute() else f"sqlite:{self.path}"
        self.busy_timeout_s = busy_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._db: sqlite3.Connection | None = None  # used on the worker thread only

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout_s)
        try:
            db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            _enable_wal(db, time.monotonic() + self.busy_timeout_s)
            db.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            db.close()
            raise
        return db

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn on the worker thread's connection, sorting failures into rejected (the data) and unavailable."""
        self._check_open()

        def call() -> T:
            if self._db is None:
                self._db = self._connect()
            return fn(self._db)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except (SpacegridError, AssertionError):
            raise
        except (sqlite3.IntegrityError, sqlite3.DataError) as exc:  # constraints, a trigger's RAISE(), bad values
            raise StoreRejected(f"SQLite rejected the data: {exc}") from exc
        except Exception as exc:  # locked, I/O, a missing table, anything unknown: retry later
            raise StoreUnavailable(f"SQLite at {self.path}: {type(exc).__name__}: {exc}") from exc

    async def open(self) -> None:
        def migrate(db: sqlite3.Connection) -> None:
            with _immediate(db):  # one opener at a time: the file's write lock
                db.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (space TEXT PRIMARY KEY, "
                           "version INTEGER NOT NULL)")
                found = db.execute(f"SELECT version FROM {SCHEMA_TABLE} WHERE space = ?",  # nosec B608  # SCHEMA_TABLE is a constant, values bound
                                   (self.tables.space,)).fetchone()
                for statement in migration_statements(self.tables, DIALECT, 0 if found is None else int(found[0])):
                    db.execute(statement)
                db.execute(f"INSERT INTO {SCHEMA_TABLE} (space, version) VALUES (?, ?) ON CONFLICT (space) "  # nosec B608  # SCHEMA_TABLE is a constant, values bound
                           "DO UPDATE SET version = excluded.version", (self.tables.space, SCHEMA_VERSION))

        await self._run(migrate)

    async def close(self) -> None:
        """Calls already made finish first (one thread, in order); later ones raise ClosedError."""
        if self._closed:
            return
        self._closed = True

        def close() -> None:
            if self._db is not None:
                with suppress(sqlite3.Error):  # nothing left to lose: every transaction has ended
                    self._db.close()
                self._db = None

        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, close)
        finally:
            self._executor.shutdown(wait=False)  # the close above was its last job

    async def progress(self, partition: int) -> Progress:
        found = await self._run(lambda db: db.execute(
            f"SELECT lsn, seq FROM {quoted(self.tables.progress)} WHERE partition = ?", (partition,)).fetchone())  # nosec B608  # identifiers via store.base.quoted, values bound
        return Progress(0, 0) if found is None else Progress(int(found[0]), int(found[1]))

    async def log_position(self, partitions: int) -> int:
        found = await self._run(lambda db: db.execute(
            f"SELECT count(*), min(seq) FROM {quoted(self.tables.progress)} WHERE partition < ?",  # nosec B608  # identifiers via store.base.quoted, values bound
            (partitions,)).fetchone())
        return 0 if found is None or int(found[0]) < partitions else int(found[1])

    async def persist(self, partition: int, rows: Sequence[Row], lsn: int, seq: int, advance: bool) -> None:
        assert lsn >= 0 and seq >= 0
        progress = quoted(self.tables.progress)

        def persist(db: sqlite3.Connection) -> None:
            now_s = time.time()
            with _immediate(db):  # the file's write lock covers the progress row
                found = db.execute(f"SELECT max(lsn, claimed) FROM {progress} WHERE partition = ?",  # nosec B608  # identifiers via store.base.quoted, values bound
                                   (partition,)).fetchone()
                if found is not None and int(found[0]) > lsn:
                    raise StaleWrite(f"partition {partition}: the store holds or was claimed up to lsn {found[0]}, "
                                     f"past this snapshot's {lsn}")
                db.execute(f"INSERT INTO {progress} (partition, lsn, seq, updated_at, claimed) VALUES (?, 0, 0, ?, ?) "  # nosec B608  # identifiers via store.base.quoted, values bound
                           "ON CONFLICT (partition) DO UPDATE SET claimed = excluded.claimed",
                           (partition, now_s, lsn))
                self._write(db, partition, rows, now_s, guarded=True)
                if advance:
                    changed = db.execute(
                        f"INSERT INTO {progress} (partition, lsn, seq, updated_at) VALUES (?, ?, ?, ?) "  # nosec B608  # identifiers via store.base.quoted, values bound
                        "ON CONFLICT (partition) DO UPDATE SET lsn = excluded.lsn, seq = excluded.seq, "
                        f"updated_at = excluded.updated_at WHERE {progress}.lsn <= excluded.lsn",
                        (partition, lsn, seq, now_s)).rowcount
                    assert changed == 1, "the position only moves forward"

        await self._run(persist)

    def _write(self, db: sqlite3.Connection, partition: int, rows: Sequence[Row], now_s: float,
               guarded: bool) -> None:
        """Upsert and delete rows; guarded: only where the stored version is older."""
        for map_name, (upserts, deletes) in newest_per_key(rows).items():
            table = quoted(self.tables.map_table(map_name))
            guard = f" WHERE {table}.version < excluded.version" if guarded else ""
            db.executemany(
                f"INSERT INTO {table} (partition, key, value, version, updated_at) VALUES (?, ?, ?, ?, ?) "  # nosec B608  # identifiers via store.base.quoted, values bound
                "ON CONFLICT (key) DO UPDATE SET partition = excluded.partition, value = excluded.value, "
                f"version = excluded.version, updated_at = excluded.updated_at{guard}",
                [(partition, row.key, row.value, row.version, now_s) for row in upserts])
            if guarded:
                db.executemany(f"DELETE FROM {table} WHERE key = ? AND version < ?",  # nosec B608  # identifiers via store.base.quoted, values bound
                               [(row.key, row.version) for row in deletes])
            else:
                db.executemany(f"DELETE FROM {table} WHERE key = ?", [(row.key,) for row in deletes])  # nosec B608  # identifiers via store.base.quoted, values bound

    async def dead_letter(self, partition: int, rows: Sequence[Row], error: str) -> None:
        def insert(db: sqlite3.Connection) -> None:
            now_s = time.time()
            with _immediate(db):
                db.executemany(f"INSERT INTO {quoted(self.tables.dead_letters)} (map, key, partition, value, version, "  # nosec B608  # identifiers via store.base.quoted, values bound
                               "error, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                               [(r.map, r.key, partition, r.value, r.version, error, now_s) for r in rows])

        await self._run(insert)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        found = await self._run(lambda db: db.execute(
            "SELECT id, map, key, partition, value, version, error, created_at FROM "  # nosec B608  # identifiers via store.base.quoted, values bound
            f"{quoted(self.tables.dead_letters)} ORDER BY id LIMIT ?", (limit,)).fetchall())
        return [DeadLetter(int(i), m, k, int(p), None if v is None else bytes(v), int(ver), e, float(t))
                for i, m, k, p, v, ver, e, t in found]

    async def dead_letter_count(self) -> int:
        return await self._count(f"SELECT count(*) FROM {quoted(self.tables.dead_letters)}")  # nosec B608  # identifiers via store.base.quoted, values bound

    async def row_count(self, map_name: str) -> int:
        return await self._count(f"SELECT count(*) FROM {quoted(self.tables.map_table(map_name))}")  # nosec B608  # identifiers via store.base.quoted, values bound

    async def _count(self, sql: str) -> int:
        return int((await self._run(lambda db: db.execute(sql).fetchone()))[0])

    async def load_page(self, partition: int, map_name: str, after_key: str, limit: int) -> list[Row]:
        table = quoted(self.tables.map_table(map_name))
        found = await self._run(lambda db: db.execute(
            f"SELECT key, value, version FROM {table} WHERE partition = ? AND key > ? ORDER BY key LIMIT ?",  # nosec B608  # identifiers via store.base.quoted, values bound
            (partition, after_key, limit)).fetchall())
        return [Row(map_name, key, bytes(value), int(version)) for key, value, version in found]

    async def load_key(self, map_name: str, key: str) -> Row | None:
        table = quoted(self.tables.map_table(map_name))
        found = await self._run(lambda db: db.execute(
            f"SELECT value, version FROM {table} WHERE key = ?", (key,)).fetchone())  # nosec B608  # identifiers via store.base.quoted, values bound
        return None if found is None else Row(map_name, key, bytes(found[0]), int(found[1]))

    async def versions(self, partition: int, map_name: str) -> list[tuple[str, int]]:
        table = quoted(self.tables.map_table(map_name))
        found = await self._run(lambda db: db.execute(  # BINARY collation: UTF-8 byte order, i.e. code points
            f"SELECT key, version FROM {table} WHERE partition = ? ORDER BY key", (partition,)).fetchall())  # nosec B608  # identifiers via store.base.quoted, values bound
        return [(str(key), int(version)) for key, version in found]

    async def digest(self, partition: int, map_name: str) -> tuple[int, str]:
        pairs = await self.versions(partition, map_name)  # SQLite has no sha256: hashed here, in code-point order
        return len(pairs), digest_of(pairs)

    async def write_rows(self, partition: int, rows: Sequence[Row]) -> None:
        def write(db: sqlite3.Connection) -> None:
            with _immediate(db):
                self._write(db, partition, rows, time.time(), guarded=False)

        await self._run(write)

    async def delete_keys(self, partition: int, map_name: str, keys: Sequence[str]) -> None:
        table = quoted(self.tables.map_table(map_name))

        def delete(db: sqlite3.Connection) -> None:
            with _immediate(db):
                db.executemany(f"DELETE FROM {table} WHERE partition = ? AND key = ?", [(partition, k) for k in keys])  # nosec B608  # identifiers via store.base.quoted, values bound

        await self._run(delete)


def _enable_wal(db: sqlite3.Connection, deadline_s: float) -> None:
    """Put the file in WAL mode (it stays so). Switching needs the file to itself and SQLite does not wait for that
    on busy_timeout, so a PU that opens while another writes retries here until the deadline."""
    while True:
        try:
            mode = str(db.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
            assert mode in ("wal", "memory"), f"SQLite journal mode {mode}"
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline_s:
                raise
            time.sleep(0.01)  # on the store's worker thread, never the event loop's


@contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE (take the write lock at once: concurrent writers wait up to busy_timeout) ... COMMIT; on any
    failure ROLLBACK, unless SQLite already ended the transaction (a trigger's RAISE(ROLLBACK), a failed COMMIT)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
