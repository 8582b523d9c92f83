"""A PostgreSQL store pre-filled for cold-start and memory benchmarks: the ticket app's `events` map with N entries of
about 100 B (msgpack), written with COPY straight into the store's own tables (layout from spacegrid.store), in a
schema of its own that is dropped afterwards; plus what a PU's memory is read from (/proc/PID/status)."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Self

from spacegrid import codec
from spacegrid.examples.tickets import space as tickets_space
from spacegrid.inspect import GridStatus
from spacegrid.launcher import DEFAULT_APP, LocalGrid
from spacegrid.store.base import quoted
from spacegrid.store.postgres import PostgresStore

MAP: Final = "events"
COPY_CHUNK_ROWS: Final = 200_000  # rows per COPY: bounds the client's memory while filling
ENTRIES_MAX: Final = 20_000_000
READY_TIMEOUT_S: Final = 900.0  # 5M rows at 1M rows/min would still make it
POLL_S: Final = 0.05  # between status reads while waiting for the backups (a status read itself takes ~50 ms)
VERSION: Final = 1  # every row's version; each partition's progress says the store holds it (lsn 1)


def value_of(i: int) -> dict[str, Any]:
    """An event record of about 100 B encoded."""
    return {"name": f"Event number {i:09d}", "venue": f"Hall {i % 977:03d}, 12 Main Street, Springfield",
            "seats": 100, "sold": i % 100, "starts": 1_767_225_600 + i, "on_sale": True}


def key_of(i: int) -> str:
    return f"E{i}"


def with_search_path(dsn: str, schema: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}search_path={schema}"


def rows(entries: int) -> Iterator[tuple[int, str, bytes, int]]:
    partition_of = tickets_space.partition_of
    encode = codec.encode
    for i in range(entries):
        key = key_of(i)
        yield partition_of(MAP, key), key, encode(value_of(i)), VERSION


class FilledStore:
    """`async with FilledStore(dsn, entries) as store:` a schema with the space's tables holding `entries` rows;
    store.url is the DSN a grid takes (search_path set to the schema)."""

    def __init__(self, dsn: str, entries: int) -> None:
        assert 0 <= entries <= ENTRIES_MAX
        self.dsn = dsn
        self.entries = entries
        self.schema = f"bench_{secrets.token_hex(4)}"
        self.url = with_search_path(dsn, self.schema)
        self.fill_s = 0.0
        self.value_bytes_mean = len(codec.encode(value_of(entries // 2)))

    async def __aenter__(self) -> Self:
        import asyncpg

        db = await asyncpg.connect(self.dsn)
        try:
            await db.execute(f"CREATE SCHEMA {self.schema}")
        finally:
            await db.close()
        try:
            await self._fill()
        except BaseException:
            await self.drop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.drop()

    async def _fill(self) -> None:
        import asyncpg

        store = PostgresStore(self.url, tickets_space.name, list(tickets_space.maps))
        await store.open()  # the store's own migrations create its tables in the schema
        await store.close()
        tables = store.tables
        started = time.perf_counter()
        db = await asyncpg.connect(self.url)
        try:
            table = tables.map_table(MAP)
            source = rows(self.entries)
            while chunk := [row for _, row in zip(range(COPY_CHUNK_ROWS), source)]:
                await db.copy_records_to_table(table, schema_name=self.schema,
                                               columns=["partition", "key", "value", "version", "updated_at"],
                                               records=[(*row, _NOW) for row in chunk])
            await db.copy_records_to_table(tables.progress, schema_name=self.schema,
                                           columns=["partition", "lsn", "seq", "claimed", "updated_at"],
                                           records=[(p, VERSION, 0, VERSION, _NOW)
                                                    for p in range(tickets_space.partitions)])
            await db.execute(f"VACUUM ANALYZE {self.schema}.{quoted(table)}")
        finally:
            await db.close()
        self.fill_s = time.perf_counter() - started

    async def drop(self) -> None:
        import asyncpg

        db = await asyncpg.connect(self.dsn)
        try:
            await db.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        finally:
            await db.close()


def _now() -> Any:
    import datetime

    return datetime.datetime.now(datetime.UTC)


_NOW: Final = _now()


@dataclass
class StartedGrid:
    """A grid started over a store: from the start of the launcher until every partition served (ready_s), and until
    every partition's hot backups were ready too (None with 1 PU: no backups)."""

    grid: LocalGrid
    ready_s: float
    backups_ready_s: float | None
    status: GridStatus


@contextmanager
def grid_over(store_url: str | None, pus: int, timeout_s: float = READY_TIMEOUT_S) -> Iterator[StartedGrid]:
    """A new grid (its own nats-server, empty) of `pus` PUs over the store; stopped and its data dir removed after."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"spacegrid-coldstart-{pus}pu-"))
    grid = LocalGrid(data_dir, DEFAULT_APP, store=store_url or "none")
    try:
        started = time.perf_counter()
        grid.start(pus=pus)
        status = grid.wait_ready(timeout_s=timeout_s, members=pus)
        ready_s = time.perf_counter() - started
        backups_s = None
        if pus > 1:
            status = wait_backups(grid, started + timeout_s)
            backups_s = time.perf_counter() - started
        yield StartedGrid(grid, ready_s, backups_s, status)
    finally:
        grid.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def wait_backups(grid: LocalGrid, deadline_s: float) -> GridStatus:
    """Until every partition has as many ready hot backups as the space asks for (bounded by deadline_s)."""
    wanted = grid.space.partitions * min(grid.space.backup_count, len(grid.pus) - 1)
    while True:
        status = grid.status()
        ready = sum(len(info.get("ready_backups", [])) for info in status.members.values())
        catching_up = sum(int(info.get("backups_catching_up", 0) or 0) for info in status.members.values())
        if ready >= wanted and catching_up == 0:
            return status
        if time.perf_counter() >= deadline_s:
            raise TimeoutError(f"{ready}/{wanted} hot backups ready at the deadline")
        time.sleep(POLL_S)  # polling the grid's status: what is waited on is other processes' progress


def member_pids(status: GridStatus) -> dict[str, int]:
    return {member: int(info["pid"]) for member, info in status.members.items() if "pid" in info}


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, in bytes."""
    return _status_kb(pid, "VmRSS") * 1024


def hwm_bytes(pid: int) -> int:
    """VmHWM (peak RSS) of a process, in bytes."""
    return _status_kb(pid, "VmHWM") * 1024


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def run(coro: Any) -> Any:
    return asyncio.run(coro)
