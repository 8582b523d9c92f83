"""Hot backups on a PU: partitions it follows from the log, kept current, ready to be promoted or read from."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable

from spacegrid.core.partition import PartitionState
from spacegrid.engine.changelog import Changelog
from spacegrid.unit.pump import load_from_store
from spacegrid.limits import Limits
from spacegrid.store.base import Store
from spacegrid.space import Space

log = logging.getLogger("spacegrid.backups")


@dataclass(eq=False)
class Backup:
    """A replica of one partition, applied from the log as it is appended."""

    partition: int
    state: PartitionState
    applied_seq: int = 0
    target_seq: int = 0  # the subject's last sequence when following began: ready once applied this far
    pending_records: int = 0
    behind_since_s: float | None = None
    detached: bool = False  # handed over for promotion: late deliveries must not touch the state any more
    sub: Any = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def ready(self) -> bool:
        """Caught up with the log as it stood when following began, and not behind now."""
        return self.sub is not None and self.applied_seq >= self.target_seq and self.pending_records == 0

    def lag(self, now_s: float) -> tuple[int, float]:
        """(records, seconds) this replica is behind the log."""
        if self.pending_records == 0 and self.applied_seq >= self.target_seq:
            return 0, 0.0
        records = max(self.pending_records, self.target_seq - self.applied_seq)
        return records, 0.0 if self.behind_since_s is None else now_s - self.behind_since_s


class Backups:
    """The backups one PU holds; started and stopped to match the partition table. At most
    `limits.catch_ups_max` of them catch up with the log at once (migration throttling: a joining PU does not
    replay every partition at the same time, which would starve the partitions it already serves); the others
    wait in order. Ownership moves only to a ready backup, so this also paces live migration."""

    def __init__(self, changelog: Changelog, space: Space, limits: Limits,
                 time_limit: Callable[[], AbstractContextManager[Any]], store: Store | None = None) -> None:
        self.changelog = changelog
        self.store = store  # with a store, a backup starts from the store's copy and follows the log's tail
        self.space = space
        self.limits = limits
        self.time_limit = time_limit
        self.held: dict[int, Backup] = {}
        self.waiting: deque[int] = deque()  # held, not started yet: started in order as catch-ups finish

    def sync(self, wanted: set[int]) -> None:
        """Follow exactly the partitions in `wanted`."""
        for partition in list(self.held):
            if partition not in wanted:
                self._stop(self.held.pop(partition))
        for partition in sorted(wanted - self.held.keys()):
            state = PartitionState(self.space, partition, self.limits, self.time_limit, track_dirty=self.store is not None)
            self.held[partition] = Backup(partition, state)
            self.waiting.append(partition)
        self._start_waiting()

    def catching_up(self) -> int:
        """Backups started and not ready yet."""
        return sum(1 for backup in self.held.values() if backup.task is not None and not backup.ready)

    def _start_waiting(self) -> None:
        slots = self.limits.catch_ups_max - self.catching_up()
        while self.waiting and slots > 0:
            backup = self.held.get(self.waiting.popleft())
            if backup is None or backup.task is not None:
                continue  # stopped (or already started) since it was queued
            backup.task = asyncio.create_task(self._start(backup), name=f"backup:{backup.partition}")
            slots -= 1

    def take(self, partition: int) -> Backup | None:
        """Stop following a partition and hand its replica over (promotion); None if not held or not started."""
        backup = self.held.pop(partition, None)
        if backup is None:
            return None
        backup.detached = True
        self._stop(backup)
        return backup if backup.sub is not None else None

    def ready_partitions(self) -> list[int]:
        return sorted(p for p, backup in self.held.items() if backup.ready)

    def lag(self) -> dict[int, tuple[int, float]]:
        now_s = time.monotonic()
        return {p: backup.lag(now_s) for p, backup in self.held.items()}

    def stop_all(self) -> None:
        for backup in self.held.values():
            self._stop(backup)
        self.held.clear()
        self.waiting.clear()

    async def _start(self, backup: Backup) -> None:
        try:
            if self.store is not None:
                progress = await self.store.progress(backup.partition)
                await load_from_store(self.store, backup.state, progress.lsn, self.limits.store_load_batch_rows)
            backup.target_seq = await self.changelog.last_sequence(backup.partition)
            backup.behind_since_s = time.monotonic() if backup.target_seq else None

            def apply(seq: int, message: Any, pending: int) -> None:
                if backup.detached:
                    return
                backup.state.replay(message)
                assert seq > backup.applied_seq, "sequences only advance"
                backup.applied_seq = seq
                backup.pending_records = pending
                if pending == 0 and seq >= backup.target_seq:
                    backup.behind_since_s = None
                    if self.waiting:
                        self._start_waiting()
                elif backup.behind_since_s is None:
                    backup.behind_since_s = time.monotonic()

            backup.sub = await self.changelog.follow(backup.partition, 0, apply, 2 * self.limits.append_bytes_max,
                                                     on_broken=lambda: self._restart(backup))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("backup of partition %d could not start (%s); will retry", backup.partition, exc)
            if self.held.get(backup.partition) is backup:
                del self.held[backup.partition]
        self._start_waiting()  # ready at once (an empty log), or failed: either way it holds no slot any more

    def _restart(self, backup: Backup) -> None:
        """Following broke (the log was trimmed past this replica): drop it; the next sync starts it afresh."""
        if self.held.get(backup.partition) is backup:
            del self.held[backup.partition]
            self._stop(backup)

    def _stop(self, backup: Backup) -> None:
        if backup.task is not None and not backup.task.done():
            backup.task.cancel()
        if backup.sub is not None:
            asyncio.ensure_future(backup.sub.unsubscribe())
        if self.waiting and backup.task is not None and not backup.ready:
            asyncio.get_running_loop().call_soon(self._start_waiting)  # its catch-up slot is free
