"""Hot backups on a PU: partitions it follows from the log, kept current, ready to be promoted or read from."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Callable

from spacegrid import codec
from spacegrid.core.epochs import EpochOwners
from spacegrid.core.logformat import parts_of
from spacegrid.core.partition import PartitionState
from spacegrid.engine.changelog import Changelog
from spacegrid.errors import SpacegridError
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
    owner: str  # the member whose log subject feeds it; a new owner means a new replica
    applied_seq: int = 0  # the state holds this partition's records of every log message up to here
    target_seq: int = 0  # the log's last message when it was loaded: ready once the follower is this far
    loaded: bool = False  # filled from the store and caught up with the log; the follower feeds it from applied_seq
    covered: bool = False  # the running follower started at or before applied_seq: it feeds this replica
    detached: bool = False  # handed over for promotion: late deliveries must not touch the state any more
    caught_up: bool = False  # was ready once: its catch-up is over (lagging later is replication lag, not a catch-up)
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Backups:
    """The backups one PU holds; started and stopped to match the partition table. One follower reads the log
    subjects of the owners of the partitions held here and applies their parts (ADR 0009; the ring placement of
    backups keeps those owners few). A backup is loaded from the store, caught up by a replay of every PU subject
    (records of earlier owners included), then joins the follower (restarted from the lowest position a replica
    needs when its filter changes; replicas skip what they have). A partition whose owner changes gets a new
    replica: the follower no longer reads the old owner's subject.
    At most `limits.catch_ups_max` backups load at once (migration throttling: a joining PU does not load every
    partition at the same time, which would starve the partitions it already serves); the others wait in order.
    Ownership moves only to a ready backup, so this also paces live migration."""

    def __init__(self, changelog: Changelog, space: Space, limits: Limits,
                 time_limit: Callable[[], AbstractContextManager[Any]], store: Store | None = None,
                 epochs: EpochOwners | None = None) -> None:
        self.changelog = changelog
        self.epochs = epochs  # records whose writer the table did not make owner at their epoch are not applied
        self.store = store  # with a store, a backup starts from the store's copy and follows the log's tail
        self.space = space
        self.limits = limits
        self.time_limit = time_limit
        self.held: dict[int, Backup] = {}
        self.waiting: deque[int] = deque()  # held, not started yet: started in order as catch-ups finish
        self.counters = {"backup_follower_restarts": 0, "backup_messages": 0, "backup_parts_applied": 0,
                         "backup_records_refused": 0}
        self._follower: Any = None
        self._follower_seq = 0  # the last log message the follower delivered (and applied to covered replicas)
        self._follower_pending = 0  # messages the server still had to deliver then
        self._behind_since_s: float | None = None
        self._refollow_task: asyncio.Task[None] | None = None
        self._generation = 0  # of the follower: deliveries of a stopped one (still in flight) are ignored
        self._filter: tuple[str, ...] = ()  # the owners' subjects the follower reads

    def sync(self, wanted: dict[int, str]) -> None:
        """Follow exactly the partitions in `wanted` (partition -> its owner)."""
        for partition, backup in list(self.held.items()):
            if wanted.get(partition) != backup.owner:
                self._stop(self.held.pop(partition))
        for partition in sorted(wanted.keys() - self.held.keys()):
            state = PartitionState(self.space, partition, self.limits, self.time_limit, track_dirty=self.store is not None)
            self.held[partition] = Backup(partition, state, wanted[partition])
            self.waiting.append(partition)
        self._start_waiting()
        if not self.held:
            self._stop_follower()

    def ready(self, backup: Backup) -> bool:
        """Caught up with the log as it stood when loaded, and not behind now."""
        return backup.covered and self._follower_seq >= backup.target_seq and self._follower_pending == 0

    def catching_up(self) -> int:
        """Backups started and not caught up yet: what holds the `catch_ups_max` slots. A replica that was ready
        once and falls behind again while the follower works through a burst is replication lag (`lag`), not a
        catch-up."""
        self._mark_caught_up()
        return sum(1 for backup in self.held.values() if backup.task is not None and not backup.caught_up)

    def _mark_caught_up(self) -> None:
        for backup in self.held.values():
            if backup.task is not None and not backup.caught_up and self.ready(backup):
                backup.caught_up = True

    def take(self, partition: int) -> Backup | None:
        """Stop following a partition and hand its replica over (promotion); None if not held or not following.
        Its applied_seq is then where its replay must start."""
        backup = self.held.pop(partition, None)
        if backup is None:
            return None
        covered = backup.covered
        if covered:
            backup.applied_seq = max(backup.applied_seq, self._follower_seq)
        backup.detached = True
        self._stop(backup)
        return backup if covered else None

    def ready_partitions(self) -> list[int]:
        return sorted(p for p, backup in self.held.items() if self.ready(backup))

    def lag(self) -> dict[int, tuple[int, float]]:
        now_s = time.monotonic()
        return {p: self.lag_of(backup, now_s) for p, backup in self.held.items()}

    def lag_of(self, backup: Backup, now_s: float) -> tuple[int, float]:
        """(records, seconds) this replica is behind the log."""
        if self.ready(backup):
            return 0, 0.0
        records = max(self._follower_pending, backup.target_seq - max(backup.applied_seq, self._follower_seq), 1)
        return records, 0.0 if self._behind_since_s is None else now_s - self._behind_since_s

    def stop_all(self) -> None:
        for backup in self.held.values():
            self._stop(backup)
        self.held.clear()
        self.waiting.clear()
        self._stop_follower()

    # ---- loading -------------------------------------------------------------------------------------------

    def _start_waiting(self) -> None:
        slots = self.limits.catch_ups_max - self.catching_up()
        while self.waiting and slots > 0:
            backup = self.held.get(self.waiting.popleft())
            if backup is None or backup.task is not None:
                continue  # stopped (or already started) since it was queued
            backup.task = asyncio.create_task(self._load(backup), name=f"backup:{backup.partition}")
            slots -= 1

    async def _load(self, backup: Backup) -> None:
        try:
            if self.store is not None:
                progress = await self.store.progress(backup.partition)
                await load_from_store(self.store, backup.state, progress.lsn, self.limits.store_load_batch_rows)
            backup.target_seq = await self.changelog.last_sequence(self.changelog.names.pu_log_wildcard)
            await self._catch_up(backup)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("backup of partition %d could not start (%s); will retry", backup.partition, exc)
            if self.held.get(backup.partition) is backup:
                del self.held[backup.partition]
            self._start_waiting()
            return
        backup.loaded = True
        if self._follower is not None and backup.applied_seq >= self._follower_seq \
                and self._subject_of(backup) in self._filter:
            backup.covered = True  # the follower has not passed its position and reads its owner: it feeds it
            if self._behind_since_s is None and backup.target_seq > self._follower_seq:
                self._behind_since_s = time.monotonic()
        else:
            self._refollow()
        self._start_waiting()

    async def _catch_up(self, backup: Backup) -> None:
        """Apply the partition's parts of every PU subject up to the log's end as it stood when loading began
        (what earlier owners wrote included: the follower reads only the current owner's subject), from the
        retained tail's start: records the store holds are skipped, their operation ids kept (a replica promoted
        later answers a retry of a write it never applied from its dedup window, as a fresh owner does)."""
        size_max_bytes = self.limits.append_bytes_max
        epochs = self.epochs

        def apply(seq: int, writer: str, message: Any) -> None:
            def refusal(epoch: int) -> str | None:
                return None if epochs is None else epochs.refusal(backup.partition, epoch, writer, epoch_max=None)

            for why in backup.state.replay_log_message(message, size_max_bytes, refusal):
                self.counters["backup_records_refused"] += 1
                log.error("backup of partition %d: log message %d not applied: %s", backup.partition, seq, why)

        backup.applied_seq = await self.changelog.replay(backup.applied_seq, backup.target_seq, apply,
                                                         2 * size_max_bytes, self.limits.replay_timeout_s)

    def _subject_of(self, backup: Backup) -> str:
        return self.changelog.names.pu_log_subject(backup.owner)

    def _wanted_filter(self) -> tuple[str, ...]:
        return tuple(sorted({self._subject_of(b) for b in self.held.values() if b.loaded and not b.detached}))

    # ---- the follower --------------------------------------------------------------------------------------

    def _refollow(self) -> None:
        """(Re)start the follower from the lowest position a loaded replica needs (once, however often asked)."""
        if self._refollow_task is None or self._refollow_task.done():
            self._refollow_task = asyncio.create_task(self._restart_follower(), name="backups:follow")

    async def _restart_follower(self) -> None:
        while True:
            loaded = [b for b in self.held.values() if b.loaded and not b.detached]
            if not loaded:
                return
            for backup in loaded:
                if backup.covered:
                    backup.applied_seq = max(backup.applied_seq, self._follower_seq)
                backup.covered = False
            start_seq = min(backup.applied_seq for backup in loaded)
            self._filter = self._wanted_filter()
            self._stop_follower()
            self._follower_seq, self._follower_pending = start_seq, 0
            self._behind_since_s = time.monotonic()
            generation = self._generation
            for backup in loaded:
                backup.covered = True  # before the first delivery: it may come before follow() returns
            try:
                self._follower = await self.changelog.follow(
                    start_seq, lambda *delivery: self._apply(generation, *delivery), 2 * self.limits.append_bytes_max,
                    on_broken=lambda: self._broken() if generation == self._generation else None,
                    subjects=list(self._filter))
            except Exception as exc:  # the connection is closing or lost: the next sync starts over
                log.warning("following the log for backups failed (%s)", exc)
                for backup in loaded:
                    self._drop(backup)
                return
            self.counters["backup_follower_restarts"] += 1
            uncovered = [b for b in self.held.values() if b.loaded and not b.covered and not b.detached]
            if not uncovered and self._filter == self._wanted_filter():
                self._start_waiting()
                return

    def _apply(self, generation: int, seq: int, _subject: str, message: Any, pending: int) -> None:
        if generation != self._generation:
            return
        self._follower_seq, self._follower_pending = seq, pending
        self.counters["backup_messages"] += 1
        size_max_bytes = self.limits.append_bytes_max
        for partition, part in parts_of(message):
            backup = self.held.get(partition)
            if backup is None or not backup.covered or backup.detached or seq <= backup.applied_seq:
                continue
            try:
                backup.state.replay(codec.decode_opaque(part, size_max_bytes))  # results as written
            except SpacegridError as exc:  # a gap (the log was trimmed past it): load it afresh
                log.warning("backup of partition %d stopped at seq %d (%s); reloading it", partition, seq, exc)
                self._drop(backup)
                self.sync({**{p: b.owner for p, b in self.held.items()}, partition: backup.owner})
                continue
            backup.applied_seq = seq
            self.counters["backup_parts_applied"] += 1
        if pending == 0:
            self._behind_since_s = None
            self._mark_caught_up()
            if self.waiting:
                self._start_waiting()
        elif self._behind_since_s is None:
            self._behind_since_s = time.monotonic()

    def _broken(self) -> None:
        """A log message did not decode: every replica drops (the next sync starts them afresh)."""
        for backup in list(self.held.values()):
            self._drop(backup)
        self._stop_follower()

    def _drop(self, backup: Backup) -> None:
        if self.held.get(backup.partition) is backup:
            del self.held[backup.partition]
            self._stop(backup)

    def _stop(self, backup: Backup) -> None:
        backup.covered = False
        if backup.task is not None and not backup.task.done():
            backup.task.cancel()
        if self.waiting and backup.task is not None:
            asyncio.get_running_loop().call_soon(self._start_waiting)  # its catch-up slot may be free

    def _stop_follower(self) -> None:
        self._generation += 1
        if self._follower is not None:
            asyncio.ensure_future(self._follower.unsubscribe())
            self._follower = None
