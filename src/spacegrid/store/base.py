"""What every durable store offers the grid (rows, the per-partition progress fence, dead letters, digests), its
table layout and numbered migrations. The choice of backend by URL is in store.factory."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from spacegrid.core.rows import Row
from spacegrid.errors import ClosedError, ConfigError

IDENTIFIER_BYTES_MAX: Final = 63  # PostgreSQL truncates longer identifiers (silently, but for a NOTICE)
SCHEMA_TABLE: Final = "sg_schema"  # (space, version): the layout version of each space's tables


@dataclass(frozen=True, slots=True)
class Progress:
    """How far the store holds a partition: every write with version <= lsn; seq is the log message holding lsn."""

    lsn: int
    seq: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry the store rejected for good, with the error it gave."""

    id: int
    map: str
    key: str
    partition: int
    value: bytes | None
    version: int
    error: str
    created_at: float  # epoch seconds


def newest_per_key(rows: Sequence[Row]) -> dict[str, tuple[list[Row], list[Row]]]:
    """map -> (upserts, deletes): the newest row of each key only, in key order. The version guards make that
    equal to applying every row (a statement may touch a row once only; one lock order for every writer)."""
    newest: dict[tuple[str, str], Row] = {}
    for row in rows:
        seen = newest.get((row.map, row.key))
        if seen is None or seen.version < row.version:
            newest[(row.map, row.key)] = row
    grouped: dict[str, tuple[list[Row], list[Row]]] = {}
    for (map_name, _), row in sorted(newest.items()):
        upserts, deletes = grouped.setdefault(map_name, ([], []))
        (deletes if row.value is None else upserts).append(row)
    return grouped


class TableNames:
    """The table (and index) names of one space; space and map names are validated (^[A-Za-z][A-Za-z0-9_-]*$), so
    double quotes make them safe identifiers."""

    def __init__(self, space: str, maps: Sequence[str]) -> None:
        # "__" separates space from map: names that contain it (or a space name ending in "_") could give two
        # spaces sharing a database the same table (space a, map b__c and space a__b, map c)
        if "__" in space or space.endswith("_") or any("__" in name for name in maps):
            raise ConfigError(f"with a store, space and map names may not contain '__' (nor a space name end in "
                              f"'_'): space {space!r}, maps {list(maps)}")
        self.space = space
        self.maps = {name: f"sg_{space}__{name}" for name in maps}
        self.progress = f"sg_{space}___progress"
        self.dead_letters = f"sg_{space}___dead_letters"
        names = [*self.maps.values(), *map(partition_index, self.maps.values()), self.progress, self.dead_letters]
        for name in names:
            if len(name.encode()) > IDENTIFIER_BYTES_MAX:
                raise ConfigError(f"store identifier {name!r} is longer than {IDENTIFIER_BYTES_MAX} bytes: "
                                  "shorten the space or map name")
        if len({name.lower() for name in names}) < len(names):  # SQLite's names ignore case
            raise ConfigError(f"the maps of space {space!r} need table names that differ in more than case: {maps}")

    def map_table(self, map_name: str) -> str:
        try:
            return self.maps[map_name]
        except KeyError:
            raise ConfigError(f"the store of space {self.space!r} has no table for map {map_name!r}") from None


def partition_index(table: str) -> str:
    return f"{table}_part"


def quoted(name: str) -> str:
    assert '"' not in name and "\x00" not in name, "identifiers are validated names"
    return f'"{name}"'


@dataclass(frozen=True, slots=True)
class Dialect:
    """The column types that differ between the SQL databases spacegrid stores to."""

    key: str  # text compared byte-wise: UTF-8 byte order is code-point order
    blob: str
    time: str
    serial_key: str


def map_table_statements(tables: TableNames, dialect: Dialect) -> list[str]:
    """Each map's table at the current layout, if missing (a map added to the space gets its table on the next
    open). A migration that changes map tables changes this too."""
    statements = []
    for table in tables.maps.values():
        statements.append(f"CREATE TABLE IF NOT EXISTS {quoted(table)} (partition INTEGER NOT NULL, "
                          f"key {dialect.key} PRIMARY KEY, value {dialect.blob} NOT NULL, version BIGINT NOT NULL, "
                          f"updated_at {dialect.time} NOT NULL)")
        statements.append(f"CREATE INDEX IF NOT EXISTS {quoted(partition_index(table))} "
                          f"ON {quoted(table)} (partition, key)")
    return statements


def _v1_space_tables(tables: TableNames, dialect: Dialect) -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {quoted(tables.progress)} (partition INTEGER PRIMARY KEY, "
        f"lsn BIGINT NOT NULL, seq BIGINT NOT NULL, updated_at {dialect.time} NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {quoted(tables.dead_letters)} (id {dialect.serial_key}, map TEXT NOT NULL, "
        f"key TEXT NOT NULL, partition INTEGER NOT NULL, value {dialect.blob}, version BIGINT NOT NULL, "
        f"error TEXT NOT NULL, created_at {dialect.time} NOT NULL)",
    ]


def _v2_claimed_lsn(tables: TableNames, dialect: Dialect) -> list[str]:
    """The fence also covers a snapshot's first batches: every persist claims its snapshot's lsn, so a deposed
    pump's older snapshot is refused as soon as its successor wrote one batch (not only once it advanced)."""
    return [f"ALTER TABLE {quoted(tables.progress)} ADD COLUMN claimed BIGINT NOT NULL DEFAULT 0"]


#: The layout's history: step n takes a space's tables from layout n-1 to n (0: none). open() applies the steps past
#: the version recorded in sg_schema, in order, then creates missing map tables, all in one transaction that
#: concurrent openers take one at a time. Append steps; never edit one that shipped.
MIGRATIONS: Final[tuple[Callable[[TableNames, Dialect], list[str]], ...]] = (
    _v1_space_tables,
    _v2_claimed_lsn,
)
SCHEMA_VERSION: Final = len(MIGRATIONS)


def migration_statements(tables: TableNames, dialect: Dialect, found_version: int) -> list[str]:
    """The DDL that brings a space's tables from `found_version` (0: new space) to SCHEMA_VERSION."""
    if found_version > SCHEMA_VERSION:
        raise ConfigError(f"the store's tables of space {tables.space!r} have layout v{found_version}, newer than "
                          f"this spacegrid's v{SCHEMA_VERSION}: upgrade spacegrid")
    statements = [sql for step in MIGRATIONS[found_version:] for sql in step(tables, dialect)]
    return statements + map_table_statements(tables, dialect)


class Store(ABC):
    """One per PU process, async. Every method raises StoreUnavailable (transient: connection, timeout, lock;
    retry later) or StoreRejected (the data itself, for good); persist also StaleWrite; open() ConfigError for
    tables of a newer layout; any method after close() raises ClosedError."""

    url: str  # for display: never a password
    concurrency: int  # transactions worth running at once

    def __init__(self, space: str, maps: Sequence[str]) -> None:
        self.tables = TableNames(space, maps)
        self.maps = list(maps)
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"the store {self.url} is closed")

    @abstractmethod
    async def open(self) -> None:
        """Connect; create or migrate the space's tables (idempotent, safe when several PUs do it at once)."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def progress(self, partition: int) -> Progress:
        """The partition's position; Progress(0, 0) if nothing was persisted."""

    @abstractmethod
    async def log_position(self, partitions: int) -> int:
        """The lowest log position of partitions 0..partitions-1: the log before it holds nothing the store lacks
        (0 while a partition has no position yet)."""

    @abstractmethod
    async def persist(self, partition: int, rows: Sequence[Row], lsn: int, seq: int, advance: bool) -> None:
        """One transaction: lock the partition's position and refuse (StaleWrite) if it is past lsn; upsert or
        delete each row where the stored version is older; with advance, move the position to (lsn, seq).
        Idempotent: persisting the same rows at the same (lsn, seq) again changes nothing."""

    @abstractmethod
    async def dead_letter(self, partition: int, rows: Sequence[Row], error: str) -> None: ...

    @abstractmethod
    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest dead letters first."""

    @abstractmethod
    async def dead_letter_count(self) -> int: ...

    async def load_partition(self, partition: int, batch_rows: int) -> AsyncIterator[list[Row]]:
        """Every live row of the partition, all maps, in batches of at most batch_rows (one map per batch), each
        one short indexed read. Not a snapshot: read progress() first; rows persisted meanwhile may be newer."""
        assert batch_rows > 0
        for map_name in self.maps:
            after = ""
            while True:
                rows = await self.load_page(partition, map_name, after, batch_rows)
                if rows:
                    yield rows
                    after = rows[-1].key
                if len(rows) < batch_rows:
                    break

    @abstractmethod
    async def load_page(self, partition: int, map_name: str, after_key: str, limit: int) -> list[Row]:
        """Up to `limit` rows of the partition's map with keys after `after_key`, in key order (keyset paging)."""

    @abstractmethod
    async def load_key(self, map_name: str, key: str) -> Row | None: ...

    @abstractmethod
    async def versions(self, partition: int, map_name: str) -> list[tuple[str, int]]:
        """(key, version) of the partition's rows of a map, in code-point order of keys."""

    @abstractmethod
    async def digest(self, partition: int, map_name: str) -> tuple[int, str]:
        """(row count, digest_of(versions)), computed where the rows are when the database can."""

    @abstractmethod
    async def delete_keys(self, partition: int, map_name: str, keys: Sequence[str]) -> None:
        """Reconciliation repair: delete these keys of the partition, whatever their version."""

    @abstractmethod
    async def write_rows(self, partition: int, rows: Sequence[Row]) -> None:
        """Reconciliation repair: upsert unconditionally, no fence, no version guard (value None: delete)."""

    @abstractmethod
    async def row_count(self, map_name: str) -> int: ...
