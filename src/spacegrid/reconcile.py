"""Reconciliation of the grid against its store: per partition and map, compare digests, list the drift, and
repair it in the direction asked."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from spacegrid.client.client import Client
from spacegrid.core.rows import Row
from spacegrid.errors import ConfigError
from spacegrid.store.base import Store

REPAIR_DIRECTIONS = ("store", "grid")  # "store": make the store equal the grid; "grid": the grid equal the store


@dataclass(frozen=True)
class Drift:
    """One key on which grid and store disagree (a version of None: that side has no such key)."""

    key: str
    grid_version: int | None
    store_version: int | None


@dataclass
class PartitionReport:
    partition: int
    map: str
    grid_entries: int = 0
    store_rows: int = 0
    pending: int = 0  # writes the store may not hold yet (write-behind lag): not drift
    equal_by_digest: bool = False
    drift: list[Drift] = field(default_factory=list)
    repaired: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def diff(grid_pairs: Sequence[tuple[str, int]], store_pairs: Sequence[tuple[str, int]], pending: set[str],
         grid_complete: bool) -> list[Drift]:
    """The keys whose versions differ, leaving out pending writes, and (when the grid evicted entries of the map)
    keys only the store holds."""
    grid = dict(grid_pairs)
    store = dict(store_pairs)
    drift = []
    for key in sorted(grid.keys() | store.keys()):
        if key in pending:
            continue
        in_grid, in_store = grid.get(key), store.get(key)
        if in_grid == in_store or (in_grid is None and not grid_complete):
            continue
        drift.append(Drift(key, in_grid, in_store))
    return drift


class Reconciler:
    """Compares and repairs one space's grid (through a client) against its store."""

    def __init__(self, client: Client, store: Store, page_keys: int = 5000) -> None:
        self.client = client
        self.store = store
        self.page_keys = page_keys

    async def check(self, partition: int, map_name: str) -> PartitionReport:
        report = PartitionReport(partition, map_name)
        summary = await self.client.partition_versions(partition, map_name)
        report.grid_entries, report.pending = int(summary["count"]), int(summary["pending_count"])
        report.store_rows, store_digest = await self.store.digest(partition, map_name)
        if report.pending == 0 and summary["complete"] and (report.grid_entries, summary["digest"]) == (
                report.store_rows, store_digest):
            report.equal_by_digest = True
            return report
        grid_pairs = await self._grid_pairs(partition, map_name)
        store_pairs = await self.store.versions(partition, map_name)
        pending = {key for key, _ in summary["pending"]}
        candidates = diff(grid_pairs, store_pairs, pending, bool(summary["complete"]))
        report.drift = await self._confirm(partition, map_name, candidates)
        return report

    async def _grid_pairs(self, partition: int, map_name: str) -> list[tuple[str, int]]:
        pairs: list[tuple[str, int]] = []
        after: str | None = None
        while True:
            page = await self.client.partition_versions(partition, map_name, after, self.page_keys)
            entries = [(str(key), int(version)) for key, version in page["entries"]]
            pairs.extend(entries)
            if len(entries) < self.page_keys:
                return pairs
            after = entries[-1][0]

    async def _confirm(self, partition: int, map_name: str, candidates: list[Drift]) -> list[Drift]:
        """Read each candidate again on both sides: a write that landed between the two listings is no drift."""
        confirmed = []
        for drift in candidates:
            entry = await self.client.get_entry(map_name, drift.key)
            row = await self.store.load_key(map_name, drift.key)
            grid_version = None if entry is None else entry[1]
            store_version = None if row is None or row.value is None else row.version
            if grid_version != store_version:
                confirmed.append(Drift(drift.key, grid_version, store_version))
        return confirmed

    async def repair(self, report: PartitionReport, direction: str) -> None:
        """Make one side equal to the other for every drifted key of the report."""
        if direction not in REPAIR_DIRECTIONS:
            raise ConfigError(f"repair direction is one of {REPAIR_DIRECTIONS}, not {direction!r}")
        map_name = report.map
        if direction == "store":
            rows, gone = [], []
            for drift in report.drift:
                entry = await self.client.get_entry(map_name, drift.key)
                if entry is None:
                    gone.append(drift.key)
                else:
                    rows.append(Row(map_name, drift.key, self.client.space.values.encode(entry[0]), entry[1]))
            if rows:
                await self.store.write_rows(report.partition, rows)
            if gone:
                await self.store.delete_keys(report.partition, map_name, gone)
        else:
            for drift in report.drift:
                row = await self.store.load_key(map_name, drift.key)
                if row is None or row.value is None:
                    await self.client.delete(map_name, drift.key)
                    continue
                value = self.client.space.values.decode(row.value, 1 << 30)  # typed as the space registered
                version = await self.client.put(map_name, drift.key, value)
                # The grid's new version may be below the row's (written behind the grid's back): write-behind's
                # version guard would keep the row, so the store takes the grid's version now.
                await self.store.write_rows(report.partition, [Row(map_name, drift.key, row.value, version)])
        report.repaired = len(report.drift)


async def reconcile(reconciler: Reconciler, partitions: Sequence[int], maps: Sequence[str], repair: str | None,
                    on_report: Callable[[PartitionReport], None] = lambda report: None,
                    concurrency: int = 4) -> list[PartitionReport]:
    """Check (and, with `repair`, repair) every (partition, map); reports in partition order."""
    limit = asyncio.Semaphore(concurrency)

    async def one(partition: int, map_name: str) -> PartitionReport:
        async with limit:
            report = await reconciler.check(partition, map_name)
            if repair is not None and report.drift:
                await reconciler.repair(report, repair)
            on_report(report)
            return report

    return list(await asyncio.gather(*(one(p, m) for p in partitions for m in maps)))
