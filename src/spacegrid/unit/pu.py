"""A processing unit: wires membership, the lifecycle driver, serving, group commit, replies, backups and the
write-behind pump of one PU process, and starts and stops them in order."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable

from spacegrid.core.epochs import EpochOwners
from spacegrid.core.lifecycle import RECOVERING
from spacegrid.observability.health import Health, health
from spacegrid.engine.subjects import Names
from spacegrid.engine.transport import Subscription, Transport
from spacegrid.errors import ConfigError, GridUnavailable, LogMissing, StoreUnavailable
from spacegrid.config import member_ttl_s
from spacegrid.limits import DEFAULT_LIMITS, Limits
from spacegrid.space import Space
from spacegrid.store.base import Store
from spacegrid.unit import maintenance
from spacegrid.unit.appender import Appender
from spacegrid.unit.backups import Backups
from spacegrid.unit.claims import ClaimView
from spacegrid.unit.driver import Driver
from spacegrid.unit.liveness import LivenessThread
from spacegrid.unit.logguard import LogGuard
from spacegrid.unit.membership import MembershipAgent
from spacegrid.unit.pump import Pump
from spacegrid.unit.replies import Replies
from spacegrid.unit.serving import Server
from spacegrid.unit.slot import Slot
from spacegrid.security.access import Access
from spacegrid.security.secrets import new_member_id

log = logging.getLogger("spacegrid.pu")


def check_store_needed(space: Space, store: Store | None) -> None:
    """Write-through and evicting maps need a store behind the grid."""
    through = [m.name for m in space.maps.values() if m.persistence == "write-through"]
    if through and store is None:
        raise ConfigError(f"maps {through} are write-through: run the PU with a store (--store URL)")
    evicting = [m.name for m in space.maps.values() if m.eviction is not None and m.eviction.evicts]
    if evicting and store is None:
        raise ConfigError(f"maps {evicting} evict entries to the store: run the PU with a store (--store URL)")


class ProcessingUnit:
    """One PU process's engine. Create, `await start()`, then `await leave()` (hand-off first) or `stop()`."""

    def __init__(
        self,
        space: Space,
        nats_url: str,
        limits: Limits = DEFAULT_LIMITS,
        replicas: int = 1,
        member_id: str | None = None,
        time_limit: Callable[[], AbstractContextManager[Any]] = nullcontext,
        store: Store | None = None,
        access: Access | None = None,
    ) -> None:
        check_store_needed(space, store)
        self.access = access
        self.space = space
        self.store = store
        self.nats_url = nats_url
        self.limits = limits
        self.replicas = replicas
        self.member_id = member_id or new_member_id(str(os.getpid()))
        self.time_limit = time_limit
        self.names = Names(space.name)
        self.metrics_url: str | None = None
        self.last_info: dict[str, Any] = {}
        self.last_info_at_s: float | None = None  # monotonic: when the loop last took a snapshot (liveness)
        self.started_s = time.time()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._stop_task: asyncio.Future[None] | None = None
        self.liveness: LivenessThread | None = None

    # ---- starting ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.transport = await Transport.connect(self.nats_url, f"pu:{self.member_id}",
                                                 connect_timeout_s=self.limits.connect_timeout_s,
                                                 jetstream_timeout_s=self.limits.jetstream_api_timeout_s,
                                                 access=self.access)
        self.changelog = self.transport.changelog(self.names, self.member_id, self.limits.append_timeout_s)
        await self.changelog.start()
        await self._open_store()
        coord = await self._bootstrap()
        self.claims = ClaimView(self.changelog, self.member_id, self._claimed_elsewhere)
        await self.claims.start(self.limits.bootstrap_timeout_s, self.limits.bootstrap_retry_s)
        self.replies = Replies(self.transport, self.limits, self.space.values)
        slots: dict[int, Slot] = {}
        self.log_guard = LogGuard(self.changelog, self.limits, on_restored=lambda: self.claims.restart(
            self.limits.bootstrap_timeout_s, self.limits.bootstrap_retry_s))
        self.appender = Appender(self.changelog, self.claims, self.limits, self.replies,
                                 on_settled=lambda slot, error: self.driver.append_settled(slot, error),
                                 kick_store=self._kick_store, guard=self.log_guard, replicated=self.replicas > 1)
        self.pump = None if self.store is None else Pump(self.store, self.changelog, self.space, self.limits,
                                                         self.appender.on_persisted,
                                                         trims=self._trims)
        epochs = EpochOwners(self.space.partitions)  # the tables' owners by epoch: what log records are checked on
        self.backups = Backups(self.changelog, self.space, self.limits, self.time_limit, self.store, epochs=epochs)
        self.membership = MembershipAgent(self.transport, coord, self.names, self.member_id, self.limits,
                                          self.space.partitions, self.space.backup_count, self._member_info,
                                          on_table=lambda: self.driver.reconcile(),
                                          on_declared_dead=self._on_declared_dead, epochs=epochs)
        self.server = Server(self.space, self.limits, self.member_id, self.transport, self.replies, self.appender,
                             self.backups, self.store, slots, lease_valid=self.membership.lease_valid,
                             table_version=lambda: self.membership.table.version)
        self.driver = Driver(self.space, self.limits, self.names, self.member_id, self.time_limit, self.transport,
                             self.changelog, self.store, self.backups, self.appender, self.membership,
                             self.server.on_message, slots)
        self.events = self.transport.events(self.names, self.member_id)
        for part in (self.membership, self.driver, self.log_guard, *([] if self.pump is None else [self.pump])):
            part.events = self.events
        self._request_sub: Subscription = await self.transport.subscribe(self.names.pu_subject(self.member_id),
                                                                         self.server.on_message)
        self._repair_sub = await self.transport.subscribe(self.names.dead_log_subject, self._on_repair)
        self.liveness = LivenessThread(self.nats_url, self.access, self.names, self.member_id, self.limits,
                                       self.membership.renewed, self.membership.removed,
                                       main_connected=lambda: self.transport.disconnected_for_s() == 0.0)
        self.membership.liveness = self.liveness
        await self.membership.heartbeat()  # the member is announced once it listens; the thread renews from then
        if self.pump is not None:
            assert self.store is not None
            self._spawn(self.pump.run(self.driver.active_slots), "pump")
            self._spawn(maintenance.prune_backups_loop(self.limits, self.store, self.backups, self._is_stopping),
                        "prune-backups")
        if any(m.eviction is not None for m in self.space.maps.values()):
            self._spawn(maintenance.eviction_loop(self.limits, self.member_id, self.driver.active_slots, self.backups,
                                                  self.appender, self._is_stopping), "eviction")
        self._tasks.append(await coord.watch(coord.members, ">", self.membership.on_member))
        self._tasks.append(await coord.watch(coord.table, self.names.table_key, self.membership.on_table_entry))
        self._spawn(self.membership.run(), "heartbeat")
        self._spawn(self.log_guard.run(self._is_stopping), "log-check")
        log.info("PU %s serving space %s", self.member_id, self.space.name)

    def _is_stopping(self) -> bool:
        return self._stopping

    def _spawn(self, coroutine: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(coroutine, name=name))

    async def _bootstrap(self) -> Any:
        """Create or open the space's stream and buckets, retrying while JetStream elects its leaders."""
        await self.transport.wait_jetstream(self.names, self.limits.bootstrap_timeout_s,
                                            self.limits.jetstream_probe_timeout_s)
        deadline_s = time.monotonic() + self.limits.bootstrap_timeout_s
        while True:
            try:
                coord = await self.transport.coordination(self.names, self.replicas, create=True,
                                                          member_ttl_s=member_ttl_s(self.limits.heartbeat_timeout_s))
                # A grid with a table had a log: never start a new empty one in place of a deleted one.
                await self.transport.ensure_stream(self.names, self.replicas, 2 * self.limits.append_bytes_max,
                                                   create=not await coord.table_written())
                await self.transport.ensure_events_stream(self.names, self.replicas)
                return coord
            except LogMissing:
                raise
            except GridUnavailable as exc:  # JetStream not ready: timeouts, no responders, leader elections
                if time.monotonic() > deadline_s:
                    raise GridUnavailable(f"JetStream did not answer within {self.limits.bootstrap_timeout_s}s: "
                                          f"{exc}") from exc
                log.info("JetStream not ready yet (%s); retrying", exc)
                await asyncio.sleep(self.limits.bootstrap_retry_s)

    async def _open_store(self) -> None:
        """Connect to the store and create or migrate its tables, retrying while it is unreachable."""
        if self.store is None:
            return
        deadline_s = time.monotonic() + self.limits.bootstrap_timeout_s
        while True:
            try:
                await self.store.open()
                return
            except StoreUnavailable as exc:
                if time.monotonic() > deadline_s:
                    raise
                log.warning("store %s unavailable (%s); retrying", self.store.url, exc)
                await asyncio.sleep(self.limits.bootstrap_retry_s)

    def _trims(self) -> bool:
        """This PU trims the log: it coordinates, and every partition was claimed in this log (a position the
        store kept from an earlier log is reset by the partition's claim before it can count)."""
        return self.membership.is_coordinator() and len(self.claims.last) >= self.space.partitions

    def _claimed_elsewhere(self, partition: int) -> None:
        driver: Driver | None = getattr(self, "driver", None)  # claims are delivered from before it exists
        if driver is not None:
            driver.claimed_elsewhere(partition)

    def _kick_store(self) -> None:
        assert self.pump is not None, "write-through outcomes exist only with a store"
        self.pump.kick.set()

    def _on_declared_dead(self) -> None:
        self.backups.stop_all()
        self.driver.release_all("declared dead by the coordinator")

    # ---- stopping ------------------------------------------------------------------------------------------

    async def leave(self, handoff_timeout_s: float | None = None) -> None:
        """Graceful shutdown: ask the coordinator to move everything this PU owns or backs up to others (live
        migration: each new owner catches up first), wait until the table shows none left (at most
        `handoff_timeout_s`, by default limits.handoff_timeout_s), then stop."""
        self.membership.leaving = True
        self.membership.beat_now()
        handoff_timeout_s = self.limits.handoff_timeout_s if handoff_timeout_s is None else handoff_timeout_s
        deadline_s = time.monotonic() + handoff_timeout_s
        while time.monotonic() < deadline_s:
            table = self.membership.table
            owned = table.owned_by(self.member_id)
            if not owned and not table.backed_up_by(self.member_id):
                break  # everything handed off
            if not self.membership.others_live() and all(p in self.driver.slots and self.driver.slots[p].serving
                                                          for p in owned):
                break  # nobody left to take over: stop once this PU serves what it owns, so the flush covers it
            await asyncio.sleep(self.limits.heartbeat_interval_s / 2)
        else:
            log.warning("hand-off not finished within %.0fs; stopping anyway", handoff_timeout_s)
        await self.stop()

    async def stop(self) -> None:
        """Leave the grid: stop heartbeating, let in-flight appends finish, persist, hand partitions back. Runs
        once; a caller that is cancelled (a bounded stop) leaves it running, and a second call waits for it."""
        if self._stop_task is None:
            self._stopping = True
            self._stop_task = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        self.membership.stopping = True
        if self.liveness is not None:
            await asyncio.to_thread(self.liveness.stop)
        self.driver.stopping = True  # no more acquisitions
        if self.pump is not None:
            self.pump.stopping = True
            self.pump.kick.set()
        for task in self._tasks:  # the loops also end on the flags: a swallowed cancellation can't keep them
            task.cancel()
        _, running = await asyncio.wait(self._tasks, timeout=self.limits.append_timeout_s) if self._tasks else ((), ())
        if running:
            log.warning("stopping with tasks still running: %s", sorted(task.get_name() for task in running))
        # Persist while the partitions are surely this PU's: once it says goodbye, a new table may move them to a
        # PU that is stopping too (all PUs stopped at once) and no longer acquires, so no one would persist them
        # before the next start (they stay in the log: nothing is lost, but the store would lag until then).
        await self.appender.wait_idle(self.limits.append_timeout_s)
        await self._flush_store()
        await self.membership.goodbye()
        self.backups.stop_all()
        await self.appender.wait_idle(self.limits.append_timeout_s)
        await self._flush_store()  # what was written since
        self.driver.release_all("PU stopping")
        await self.replies.flush()
        await self.log_guard.stop()
        await self.events.stop()
        await self.claims.stop()
        await self.changelog.stop()
        await self.transport.drain()
        if self.store is not None:
            await self.store.close()

    async def _flush_store(self) -> None:
        """Graceful stop: persist every unpersisted write of the partitions this PU still owns (bounded)."""
        if self.pump is None:
            return
        deadline_s = time.monotonic() + self.limits.store_flush_on_stop_s
        while time.monotonic() < deadline_s:
            if await self.pump.flush_all(self.driver.active_slots(), retry_now=True):
                return
            await asyncio.sleep(min(1.0, max(0.0, deadline_s - time.monotonic())))
        lagging = sum(len(slot.state.dirty) for slot in self.driver.active_slots())
        log.error("stopping with %d writes the store does not hold yet (it was unavailable for %.0fs); they are in "
                  "the log, and the next owner persists them", lagging, self.limits.store_flush_on_stop_s)

    async def _on_repair(self, _: Any) -> None:
        """An operator quarantined a log message (`spacegrid repair`): partitions it stopped are tried at once."""
        retried = self.driver.recovery.repaired()
        if retried:
            log.warning("the log was repaired: recovering partitions %s again", retried)
            self.driver.reconcile()

    # ---- statistics ----------------------------------------------------------------------------------------

    def health(self) -> Health:
        """For the probes, from the metrics thread: plain reads of values the loop replaces whole."""
        at_s = self.last_info_at_s
        info = self.last_info
        return health(None if at_s is None else time.monotonic() - at_s, self.limits.heartbeat_timeout_s,
                      registered=self.membership.lease_until_s > 0,  # 0 until it joins, again once declared dead
                      lease_valid=self.membership.lease_valid(),
                      leaving=bool(info.get("leaving")), recovering=len(info.get("recovering", ())),
                      log_missing=bool(info.get("log_missing")))

    def statistics(self) -> dict[str, Any]:
        slots = self.driver.slots.values()
        return {
            "member": self.member_id,
            "active": sorted(slot.partition for slot in self.driver.active_slots()),
            "recovering": self.driver.partitions_in(*RECOVERING),
            "entries": sum(slot.state.entry_count for slot in slots),
            "ready_backups": self.backups.ready_partitions(),
            "backup_lag": {str(p): list(lag) for p, lag in self.backups.lag().items()},
            "backups_catching_up": self.backups.catching_up(),
            "backups_waiting": len(self.backups.waiting),
            "leaving": self.membership.leaving,
            "append_backlog_records": sum(len(op.writes) for slot in slots for op in slot.state.unsent),
            "waiting_replies": self.appender.waiting,
            "unsent_replies": self.replies.pending,
            "maps": self._map_statistics(),
            **self._store_statistics(),
            "table_version": self.membership.table.version,
            "log_missing": self.log_guard.missing,
            "log_seq": max([self.claims.seen_seq, *(slot.last_seq for slot in slots)]),
            "poisoned": self.driver.recovery.report(),
            "partitions_poisoned": len(self.driver.recovery.poisoned()),
            **self.server.counters, **self.appender.counters, **self.driver.counters, **self.membership.counters,
            **self.backups.counters, **self.log_guard.counters, **self.events.counters,
        }

    def _map_statistics(self) -> dict[str, dict[str, int]]:
        """Per map: entries in memory on this PU's owned partitions; for bounded maps, hits, misses (read through
        from the store), evictions and expirations."""
        maps: dict[str, dict[str, int]] = {name: {"entries": 0} for name in self.space.maps}
        for slot in self.driver.slots.values():
            for name, entries in slot.state.maps.items():
                maps[name]["entries"] += len(entries)
            for name, (hits, misses, evictions, expirations) in slot.state.cache.items():
                totals = maps[name]
                for field_name, value in (("hits", hits), ("misses", misses), ("evictions", evictions),
                                          ("expirations", expirations)):
                    totals[field_name] = totals.get(field_name, 0) + value
        return maps

    def _store_statistics(self) -> dict[str, Any]:
        if self.pump is None:
            return {}
        now_s = time.monotonic()
        active = self.driver.active_slots()
        return {
            "store": self.store.url if self.store is not None else None,
            "store_available": self.pump.available,
            "write_behind_lag_records": sum(len(slot.state.dirty) for slot in active),
            "write_behind_lag_s": round(max((slot.persist.lag_s(now_s) for slot in active), default=0.0), 3),
            "write_through_waiting": sum(len(slot.persist.waiters) for slot in active),
            **self.pump.counters,
        }

    def _member_info(self) -> dict[str, Any]:
        info = {"host": socket.gethostname(), "pid": os.getpid(), "started": self.started_s, "beat": time.time(),
                "heartbeat_timeout_s": self.limits.heartbeat_timeout_s, "incarnation": self.membership.incarnation,
                "metrics_url": self.metrics_url, **self.statistics()}
        # Replaced whole: the metrics thread reads it without locks. Latencies and errors by class go to the metrics
        # endpoint only, not into the member record every heartbeat.
        self.last_info = {**info, "latency": self.replies.latencies.snapshot(), "errors": dict(self.replies.errors)}
        self.last_info_at_s = time.monotonic()
        return info
