"""The store backends against real databases (a SQLite file, the local PostgreSQL): the progress fence, version
guards, loading, digests, rejections, dead letters, concurrent openers and an unreachable server."""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from spacegrid.errors import ClosedError, ConfigError, StaleWrite, StoreRejected, StoreUnavailable
from spacegrid.store import Row, Store, digest_of, open_store
from spacegrid.store.base import SCHEMA_TABLE, TableNames

PG_DSN = os.environ.get("SPACEGRID_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
MAPS = ["m", "other-map"]


@dataclass(frozen=True)
class Target:
    """One database under test and a space of its own in it (a unique name: PostgreSQL is shared)."""

    url: str
    space: str

    @property
    def postgres(self) -> bool:
        return self.url.startswith("postgresql")

    def store(self, maps: list[str] = MAPS) -> Store:
        return open_store(self.url, self.space, maps)

    def table(self, map_name: str) -> str:
        return TableNames(self.space, MAPS).map_table(map_name)

    def sql(self, statement: str) -> None:
        """Run statements on a connection of the test's own, outside the store."""
        if self.postgres:
            asyncio.run(_pg_execute(statement))
        else:
            with sqlite3.connect(self.url.removeprefix("sqlite://")) as db:
                db.executescript(statement)


async def _pg_execute(statement: str) -> None:
    db = await asyncpg.connect(PG_DSN, timeout=10)
    try:
        await db.execute(statement)
    finally:
        await db.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    space = f"t{secrets.token_hex(4)}"
    if request.param == "sqlite":
        yield Target(f"sqlite://{tmp_path / 'store.db'}", space)
        return
    target = Target(PG_DSN, space)
    yield target
    names = TableNames(space, MAPS)
    tables = ", ".join(f'"{name}"' for name in [*names.maps.values(), names.progress, names.dead_letters])
    target.sql(f"DROP TABLE IF EXISTS {tables} CASCADE; DROP FUNCTION IF EXISTS {space}_reject() CASCADE; "
               f"DELETE FROM {SCHEMA_TABLE} WHERE space = '{space}'")


async def create_tables(store: Store) -> None:
    """Nothing: opening the store (done by run) creates and migrates its tables."""


def run(target: Target, body: Callable[[Store], Awaitable[None]], open_first: bool = True) -> None:
    async def main() -> None:
        store = target.store()
        if open_first:
            await store.open()
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


def test_upserts_never_overwrite_a_newer_version(target: Target) -> None:
    """An upsert lands only where the stored version is older; a stale one changes nothing."""

    async def body(store: Store) -> None:
        await store.persist(0, [Row("m", "a", b"\x01", 5), Row("other-map", "a", b"\x02", 6)], 6, 60, advance=True)
        await store.persist(0, [Row("m", "a", b"\x09", 3)], 7, 70, advance=False)
        assert await store.load_key("m", "a") == Row("m", "a", b"\x01", 5)
        await store.persist(0, [Row("m", "a", b"\x07", 7)], 7, 70, advance=False)
        assert await store.load_key("m", "a") == Row("m", "a", b"\x07", 7)
        assert await store.load_key("other-map", "a") == Row("other-map", "a", b"\x02", 6)
        assert await store.load_key("m", "missing") is None

    run(target, body)


def test_deletes_are_guarded_by_version_too(target: Target) -> None:
    """A delete removes the row only where the stored version is older than the delete's."""

    async def body(store: Store) -> None:
        await store.persist(1, [Row("m", "k", b"v", 5)], 5, 5, advance=True)
        await store.persist(1, [Row("m", "k", None, 4)], 5, 5, advance=False)
        assert await store.load_key("m", "k") == Row("m", "k", b"v", 5)
        await store.persist(1, [Row("m", "k", None, 6), Row("m", "never-stored", None, 6)], 6, 6, advance=True)
        assert await store.load_key("m", "k") is None
        assert await store.row_count("m") == 0

    run(target, body)


def test_one_batch_may_hold_a_key_twice(target: Target) -> None:
    """Rows of one key in one batch end as the newest of them says (a statement can't touch a row twice)."""

    async def body(store: Store) -> None:
        await store.persist(0, [Row("m", "a", b"1", 1), Row("m", "a", b"3", 3), Row("m", "a", b"2", 2),
                                Row("m", "b", b"1", 4), Row("m", "b", None, 5)], 5, 5, advance=True)
        assert await store.load_key("m", "a") == Row("m", "a", b"3", 3)
        assert await store.load_key("m", "b") is None

    run(target, body)


def test_progress_only_advances_and_an_older_snapshot_is_stale(target: Target) -> None:
    """The position moves with advance only; a snapshot older than it is refused whole (StaleWrite); persisting
    the same snapshot again is harmless."""

    async def body(store: Store) -> None:
        assert await store.progress(2) == (await store.progress(3)) and (await store.progress(2)).lsn == 0
        await store.persist(2, [Row("m", "a", b"1", 1)], 1, 10, advance=False)
        assert (await store.progress(2)).lsn == 0
        await store.persist(2, [Row("m", "b", b"2", 2)], 2, 20, advance=True)
        await store.persist(2, [Row("m", "b", b"2", 2)], 2, 20, advance=True)
        progress = await store.progress(2)
        assert (progress.lsn, progress.seq) == (2, 20)
        with pytest.raises(StaleWrite):
            await store.persist(2, [Row("m", "c", b"deposed", 1)], 1, 10, advance=True)
        assert await store.load_key("m", "c") is None and (await store.progress(2)).lsn == 2
        await store.persist(2, [], 9, 90, advance=True)
        assert (await store.progress(2)).seq == 90 and (await store.progress(3)).lsn == 0

    run(target, body)


def test_a_successors_first_batch_already_fences_a_deposed_pump(target: Target) -> None:
    """The new owner's snapshot at lsn 9 is persisted in two batches; between them, the deposed owner's snapshot
    at lsn 5 (which would bring back the key the first batch deleted) is refused, though the position has not
    advanced yet."""

    async def body(store: Store) -> None:
        await store.persist(4, [Row("m", "k", b"old", 3)], 3, 30, advance=True)
        await store.persist(4, [Row("m", "k", None, 8)], 9, 90, advance=False)  # the successor's first batch
        assert (await store.progress(4)).lsn == 3
        with pytest.raises(StaleWrite):
            await store.persist(4, [Row("m", "k", b"resurrected", 4)], 5, 50, advance=False)
        assert await store.load_key("m", "k") is None
        await store.persist(4, [], 9, 90, advance=True)
        assert (await store.progress(4)).lsn == 9

    run(target, body)


def test_load_partition_returns_exactly_the_live_rows_in_batches(target: Target) -> None:
    """Every live row of the partition, of every map, in batches no bigger than asked; no other partition's, no
    deleted one."""
    live = [Row("m", f"k{i:03}", bytes([i]), i + 1) for i in range(23)] + [Row("other-map", "x", b"o", 30)]

    async def body(store: Store) -> None:
        await store.persist(7, [*live, Row("m", "gone", b"g", 1)], 30, 30, advance=True)
        await store.persist(7, [Row("m", "gone", None, 31)], 31, 31, advance=True)
        await store.persist(8, [Row("m", "elsewhere", b"e", 1)], 1, 1, advance=True)
        batches = [batch async for batch in store.load_partition(7, 5)]
        assert all(0 < len(batch) <= 5 for batch in batches)
        loaded = [row for batch in batches for row in batch]
        assert sorted(loaded, key=lambda r: (r.map, r.key)) == sorted(live, key=lambda r: (r.map, r.key))
        assert [row async for batch in store.load_partition(9, 5) for row in batch] == []

    run(target, body)


def test_versions_and_digest_agree_with_digest_of(target: Target) -> None:
    """versions() are in code-point order and digest() equals digest_of(versions), non-ASCII keys included (the
    PostgreSQL one is computed by the server)."""
    keys = ["z", "a", "é", "Z", "日本", "a b", "a\tb", "\uffff", "\U0001f600", "ß", "Ä", "a-b", "a_b", "10", "9"]

    async def body(store: Store) -> None:
        await store.persist(3, [Row("m", key, key.encode(), i + 1) for i, key in enumerate(keys)], 20, 20, True)
        await store.persist(3, [Row("other-map", "a", b"1", 21)], 21, 21, advance=True)
        pairs = await store.versions(3, "m")
        assert pairs == sorted((key, i + 1) for i, key in enumerate(keys))
        assert [key for key, _ in pairs] == sorted(keys)  # code points: Python's str order
        assert await store.digest(3, "m") == (len(keys), digest_of(pairs))
        assert await store.digest(4, "m") == (0, digest_of([]))

    run(target, body)


def test_repairs_write_and_delete_without_guards(target: Target) -> None:
    """write_rows overwrites whatever version is stored; delete_keys removes keys of the partition only."""

    async def body(store: Store) -> None:
        await store.persist(3, [Row("m", "a", b"new", 9), Row("m", "b", b"b", 9)], 9, 9, advance=True)
        await store.persist(4, [Row("m", "c", b"c", 9)], 9, 9, advance=True)
        await store.write_rows(3, [Row("m", "a", b"old", 1), Row("m", "d", b"d", 2)])
        assert await store.load_key("m", "a") == Row("m", "a", b"old", 1)
        await store.delete_keys(3, "m", ["b", "c", "d"])
        assert await store.versions(3, "m") == [("a", 1)] and await store.versions(4, "m") == [("c", 9)]
        assert await store.row_count("m") == 2 and (await store.progress(3)).lsn == 9

    run(target, body)


def test_a_row_a_trigger_rejects_is_rejected_for_good_and_dead_lettered(target: Target) -> None:
    """A trigger refusing key 'poison' makes the whole batch StoreRejected (nothing of it lands, the position stays);
    a batch without it persists; the dead-letter table keeps the row and the error."""
    run(target, create_tables)
    table = target.table("m")
    if target.postgres:
        target.sql(f"""CREATE FUNCTION {target.space}_reject() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF NEW.key = 'poison' THEN RAISE EXCEPTION 'poison rejected'; END IF; RETURN NEW; END $$;
            CREATE TRIGGER reject BEFORE INSERT OR UPDATE ON "{table}" FOR EACH ROW
            EXECUTE FUNCTION {target.space}_reject()""")
    else:
        target.sql(f"""CREATE TRIGGER reject BEFORE INSERT ON "{table}" WHEN NEW.key = 'poison'
            BEGIN SELECT RAISE(ABORT, 'poison rejected'); END""")

    async def body(store: Store) -> None:
        await store.persist(0, [Row("m", "ok", b"1", 1)], 1, 1, advance=True)
        with pytest.raises(StoreRejected, match="poison rejected"):
            await store.persist(0, [Row("m", "fine", b"1", 2), Row("m", "poison", b"2", 3)], 3, 3, advance=True)
        assert await store.load_key("m", "fine") is None and (await store.progress(0)).lsn == 1
        await store.persist(0, [Row("m", "fine", b"1", 2)], 3, 3, advance=True)
        assert await store.load_key("m", "fine") == Row("m", "fine", b"1", 2)

        before_s = time.time()
        await store.dead_letter(0, [Row("m", "poison", b"2", 3), Row("m", "gone", None, 4)], "poison rejected")
        letters = await store.dead_letters()
        assert [(d.map, d.key, d.partition, d.value, d.version, d.error) for d in letters] == [
            ("m", "poison", 0, b"2", 3, "poison rejected"), ("m", "gone", 0, None, 4, "poison rejected")]
        assert letters[0].id < letters[1].id and abs(letters[0].created_at - before_s) < 60
        assert await store.dead_letter_count() == 2 and len(await store.dead_letters(limit=1)) == 1

    run(target, body)


def test_postgres_rejects_keys_text_cannot_hold(target: Target) -> None:
    """A NUL in a key is a data exception (class 22) in PostgreSQL: rejected, and still dead-letterable."""
    if not target.postgres:
        pytest.skip("SQLite stores NUL in text")

    async def body(store: Store) -> None:
        with pytest.raises(StoreRejected, match="22021"):
            await store.persist(0, [Row("m", "a\x00b", b"1", 1)], 1, 1, advance=True)
        await store.dead_letter(0, [Row("m", "a\x00b", b"1", 1)], "nul")
        assert [d.key for d in await store.dead_letters()] == ["a\\x00b"]

    run(target, body)


def test_concurrent_openers_are_safe_and_a_new_map_gets_its_table(target: Target) -> None:
    """Several stores opening one space at once all succeed and see one layout; a map added later gets its table
    on the next open; a layout newer than this spacegrid's is refused."""

    async def main() -> None:
        stores = [target.store() for _ in range(4)]
        await asyncio.gather(*(store.open() for store in stores))
        await stores[0].persist(0, [Row("m", "a", b"1", 1)], 1, 1, advance=True)
        assert await stores[3].load_key("m", "a") == Row("m", "a", b"1", 1)
        await asyncio.gather(*(store.close() for store in stores))

    asyncio.run(main())
    target.sql(f"UPDATE {SCHEMA_TABLE} SET version = 99 WHERE space = '{target.space}'")

    async def newer() -> None:
        store = target.store()
        with pytest.raises(ConfigError, match="upgrade spacegrid"):
            await store.open()
        await store.close()

    asyncio.run(newer())


def test_concurrent_writers_share_one_database(target: Target) -> None:
    """Two stores (as two PUs) persisting different partitions at the same time both succeed (SQLite: they queue
    on the file's lock)."""

    async def main() -> None:
        stores = [target.store(), target.store()]
        await asyncio.gather(*(store.open() for store in stores))

        async def write(store: Store, partition: int) -> None:
            for lsn in range(1, 21):
                await store.persist(partition, [Row("m", f"{partition}-{lsn}", b"v", lsn)], lsn, lsn, advance=True)

        await asyncio.gather(write(stores[0], 0), write(stores[1], 1))
        assert await stores[0].row_count("m") == 40
        assert [(await stores[1].progress(p)).lsn for p in (0, 1)] == [20, 20]
        await asyncio.gather(*(store.close() for store in stores))

    asyncio.run(main())


def test_a_closed_store_says_so(target: Target) -> None:
    """Any call after close() raises ClosedError, not a database error."""

    async def main() -> None:
        store = target.store()
        await store.open()
        await store.close()
        await store.close()
        with pytest.raises(ClosedError):
            await store.progress(0)

    asyncio.run(main())


def test_an_unreachable_postgres_is_unavailable_at_once() -> None:
    """Nothing listens on port 1: every call is StoreUnavailable (retry later), quickly."""

    async def main() -> None:
        store = open_store("postgresql://postgres:secret@127.0.0.1:1/test", "unreachable", MAPS)
        started_s = time.monotonic()
        with pytest.raises(StoreUnavailable) as raised:
            await store.open()
        with pytest.raises(StoreUnavailable):
            await store.persist(0, [Row("m", "a", b"1", 1)], 1, 1, advance=True)
        assert time.monotonic() - started_s < 5 and "secret" not in str(raised.value)
        await store.close()

    asyncio.run(main())


def test_sqlite_busy_beyond_the_timeout_is_unavailable(tmp_path: Path) -> None:
    """A SQLite file locked by another writer for longer than the busy timeout: StoreUnavailable, not a crash."""
    from spacegrid.store.sqlite import SqliteStore

    path = tmp_path / "locked.db"

    async def main() -> None:
        store = SqliteStore(path, "s", MAPS, busy_timeout_s=0.2)
        await store.open()
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreUnavailable, match="locked"):
                await store.persist(0, [Row("m", "a", b"1", 1)], 1, 1, advance=True)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        await store.persist(0, [Row("m", "a", b"1", 1)], 1, 1, advance=True)
        await store.close()

    asyncio.run(main())


def test_a_missing_table_is_unavailable_not_rejected(target: Target) -> None:
    """A table dropped under the store (an operator's mistake, a restore in progress) is a retry-later error."""
    run(target, lambda store: store.persist(0, [Row("m", "a", b"1", 1)], 1, 1, advance=True))
    target.sql(f'DROP TABLE "{TableNames(target.space, MAPS).progress}"')

    async def body(store: Store) -> None:
        with pytest.raises(StoreUnavailable):
            await store.persist(0, [Row("m", "b", b"1", 2)], 2, 2, advance=True)

    run(target, body, open_first=False)  # open() would create the table again


def test_a_progress_lock_held_past_the_statement_timeout_is_unavailable(target: Target) -> None:
    """Another session holding the partition's progress row (a pump that hangs mid-transaction) delays a persist
    by the statement timeout at most; then StoreUnavailable."""
    if not target.postgres:
        pytest.skip("SQLite's lock wait is the busy timeout, tested above")
    from spacegrid.store.postgres import PostgresStore

    async def main() -> None:
        store = PostgresStore(target.url, target.space, MAPS, statement_timeout_s=0.3)
        await store.open()
        await store.persist(0, [], 1, 1, advance=True)
        holder = await asyncpg.connect(PG_DSN)
        try:
            async with holder.transaction():
                await holder.execute(f'SELECT lsn FROM "{store.tables.progress}" WHERE partition = 0 FOR UPDATE')
                started_s = time.monotonic()
                with pytest.raises(StoreUnavailable, match="57014"):
                    await store.persist(0, [Row("m", "a", b"1", 2)], 2, 2, advance=True)
                assert time.monotonic() - started_s < 2
        finally:
            await holder.close()
        await store.persist(0, [Row("m", "a", b"1", 2)], 2, 2, advance=True)
        await store.close()

    asyncio.run(main())
