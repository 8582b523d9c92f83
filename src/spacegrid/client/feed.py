"""Change feeds and continuous queries on the client: committed changes read from the partition logs (so they
survive any PU's loss and never show an uncommitted write), and a local view of a map's matching entries kept
current from a snapshot joined to the feed without a gap."""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spacegrid import protocol
from spacegrid.core.feed import Change, ChangeReader, FeedFilter, Position
from spacegrid.errors import ChangesLost, GridTimeout, RequestError
from spacegrid.limits import FEED_SNAPSHOT_PAGE_ENTRIES_MAX

if TYPE_CHECKING:
    from spacegrid.client.client import Client

log = logging.getLogger("spacegrid.feed")

EARLIEST = "earliest"  # listen(from_=EARLIEST): from the oldest change the log still holds
SNAPSHOT_PARTITIONS_AT_ONCE = 16  # partitions a continuous query's snapshot reads at once
RESYNCS_MAX = 3  # a continuous query whose feed lost its position takes a new snapshot at most this often in a row


def _reader(client: Client, after: Position, wanted: FeedFilter, lenient_start: bool = False) -> ChangeReader:
    limits, values = client.limits, client.space.values
    return ChangeReader(client.names.pu_log_wildcard[:-1], after, wanted, client.epochs,
                        lambda data: values.decode(data, limits.write_bytes_max), limits.append_bytes_max,
                        lenient_start)


async def listen(client: Client, map: str | None, key: str | None = None,
                 where: Callable[[str, Any], bool] | None = None, from_: str | int | Position | None = None,
                 expiries: bool = True) -> AsyncIterator[Change]:
    """The committed changes of `map` (None: every map), or of one `key`, in log order (a key's changes in the
    order they were committed), after position `from_` (a Change's `position`, or its text; None: from now;
    "earliest": from the oldest the log still holds). Store the last position you processed with your own state
    and resume from it: at-least-once across restarts, exactly once in effect. Puts pass `where(key, value)` if
    given. ChangesLost if the log no longer holds the changes after `from_` (trimmed behind the store)."""
    if map is not None:
        client.space.map_def(map)
    if key is not None and map is None:
        raise RequestError("listening to one key needs its map")
    partition = None if key is None or map is None else client.space.partition_of(map, key)
    lenient = False
    if from_ is None:
        after = Position((await client.transport.log_bounds(client.names))[1])
    elif from_ == EARLIEST:
        after, lenient = Position(max((await client.transport.log_bounds(client.names))[0] - 1, 0)), True
    else:
        after = Position.parse(from_)
    reader = _reader(client, after, FeedFilter(map, key, partition, where, expiries), lenient)
    async for seq, subject, data in client.transport.read_log(client.names, reader.first_seq()):
        for change in reader.on_message(seq, subject, data):
            yield change


@dataclass(frozen=True, slots=True)
class _Pages:
    """A partition's snapshot pages: keys up to `last_keys[i]` (past the last one: to the end, `lsns[-1]`) are as of
    version `lsns[i]`; so len(lsns) == len(last_keys) + 1."""

    last_keys: list[str]
    lsns: list[int]

    def version_of(self, key: str) -> int:
        """The version the snapshot holds `key`'s page at."""
        return self.lsns[bisect.bisect_left(self.last_keys, key)]


class ContinuousQuery:
    """`entries`: the (key -> value) of `map` whose puts `where(key, value)` accepts (every entry without one),
    kept current by a task reading the change feed. Built by `await ContinuousQuery.start(...)`; `await sync()`
    waits until it holds every change committed before the call; `close()` stops it. If the feed loses its position
    (the log trimmed past it), the view takes a new snapshot by itself (`resyncs` counts them)."""

    def __init__(self, client: Client, map: str, where: Callable[[str, Any], bool] | None,
                 on_change: Callable[[Change], None] | None) -> None:
        client.space.map_def(map)
        self.client = client
        self.map = map
        self.where = where
        self.on_change = on_change
        self.entries: dict[str, Any] = {}
        self.position: Position | None = None  # the last change applied (None: only the snapshot so far)
        self.resyncs = 0
        self._pages: list[_Pages] = []
        self._reader: ChangeReader | None = None
        self._advanced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    @classmethod
    async def start(cls, client: Client, map: str, where: Callable[[str, Any], bool] | None = None,
                    on_change: Callable[[Change], None] | None = None) -> ContinuousQuery:
        query = cls(client, map, where, on_change)
        feed_after = await query._snapshot()
        query._task = asyncio.get_running_loop().create_task(query._follow(feed_after))
        return query

    async def _snapshot(self) -> Position:
        """Read every partition's entries; returns the position the feed starts after: every write newer than
        the snapshot is at a later stream sequence (a partition's pages say after which; an idle one's writes all
        come after the log's end read before the snapshot)."""
        client = self.client
        log_end = (await client.transport.log_bounds(client.names))[1]
        gate = asyncio.Semaphore(SNAPSHOT_PARTITIONS_AT_ONCE)
        results = await asyncio.gather(*(self._read_partition(p, gate) for p in range(client.space.partitions)))
        entries: dict[str, Any] = {}
        self._pages = []
        start_seq = log_end
        for rows, pages, after_seq in results:
            entries.update(rows)
            self._pages.append(pages)
            start_seq = min(start_seq, after_seq if after_seq is not None else log_end)
        self.entries = entries
        return Position(start_seq)

    async def _read_partition(self, partition: int,
                              gate: asyncio.Semaphore) -> tuple[dict[str, Any], _Pages, int | None]:
        rows: dict[str, Any] = {}
        pages = _Pages([], [])
        after_seq: int | None = None  # None while every page came from an idle partition
        after_key: str | None = None
        async with gate:
            while True:
                page, lsn, page_after_seq, idle, more = await self.client._call(
                    partition, protocol.OP_SCAN, self.map, "", after_key, FEED_SNAPSHOT_PAGE_ENTRIES_MAX)
                for key, value, _version in page:
                    if self.where is None or self.where(key, value):
                        rows[key] = value
                if not idle:
                    after_seq = page_after_seq if after_seq is None else min(after_seq, page_after_seq)
                after_key = page[-1][0] if page else after_key
                pages.lsns.append(lsn)
                if more:
                    assert after_key is not None, "a page followed by more holds at least one entry"
                    pages.last_keys.append(after_key)
                else:
                    return rows, pages, after_seq

    def _covered(self, change: Change) -> bool:
        """Whether the snapshot already holds this change (its version is not past its key's page's)."""
        return change.version <= self._pages[change.partition].version_of(change.key)

    async def _follow(self, after: Position) -> None:
        try:
            while True:
                try:
                    await self._apply_feed(after)
                except ChangesLost as exc:
                    if self.resyncs >= RESYNCS_MAX:
                        raise
                    self.resyncs += 1
                    log.warning("continuous query on %s: %s; taking a new snapshot", self.map, exc)
                    after = await self._snapshot()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # surfaced by sync()
            self._failure = exc
            self._advanced.set()

    async def _apply_feed(self, after: Position) -> None:
        self._reader = _reader(self.client, after, FeedFilter(self.map))
        async for seq, subject, data in self.client.transport.read_log(self.client.names, self._reader.first_seq()):
            for change in self._reader.on_message(seq, subject, data):
                if not self._covered(change):
                    self._apply(change)
            self._advanced.set()

    def _apply(self, change: Change) -> None:
        self.position = change.position
        if change.kind == "put" and (self.where is None or self.where(change.key, change.value)):
            self.entries[change.key] = change.value
        elif self.entries.pop(change.key, None) is None:
            return  # a delete, or a put that does not match, of a key not in the view: nothing changed
        if self.on_change is not None:
            self.on_change(change)

    async def sync(self, timeout_s: float = 10.0) -> None:
        """Wait until the view holds every change committed before this call (GridTimeout after timeout_s)."""
        target = (await self.client.transport.log_bounds(self.client.names))[1]
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + timeout_s
        while True:
            if self._failure is not None:
                raise self._failure
            if self._reader is not None and self._reader.read_through() >= target:
                return
            self._advanced.clear()
            remaining_s = deadline_s - loop.time()
            if remaining_s <= 0:
                raise GridTimeout(f"the continuous query on {self.map} did not reach log position {target} "
                                  f"in {timeout_s:g} s")
            try:
                await asyncio.wait_for(self._advanced.wait(), remaining_s)
            except asyncio.TimeoutError:
                continue

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def __aenter__(self) -> ContinuousQuery:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()
