"""A processing unit: owns partitions, serves requests next to their data, and acknowledges writes only after
their fenced append is acknowledged by JetStream."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections import deque
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from spacegrid import codec, protocol
from spacegrid.core.ownership import Membership, coordinator, next_table, plan
from spacegrid.core.partition import Outcome, PartitionState, encode_owner_marker
from spacegrid.engine.changelog import Changelog, ensure_stream
from spacegrid.engine.connection import connect
from spacegrid.engine.coordination import Coordination
from spacegrid.engine.subjects import Names
from spacegrid.errors import (
    CommitUnknown,
    ConfigError,
    Fenced,
    GridUnavailable,
    NotLoaded,
    NotOwner,
    PartitionUnavailable,
    RequestError,
    SpacegridError,
    StoreUnavailable,
)
from spacegrid.limits import DEFAULT_LIMITS, Limits
from spacegrid.partitioning import PartitionTable
from spacegrid.space import Space
from spacegrid.store.base import Store
from spacegrid.unit.backups import Backups
from spacegrid.unit.pump import PersistState, Pump, load_from_store

log = logging.getLogger("spacegrid.pu")

PING = b"\x90"  # an empty batch: the PU answers at once; NATS answers "no responders" for a PU that is gone
RECOVERING = "recovering"
ACTIVE = "active"
RELEASED = "released"


@dataclass(eq=False)
class Slot:
    """A partition this PU holds: its state machine, the fence position and replies waiting for commits."""

    partition: int
    epoch: int
    state: PartitionState
    status: str = RECOVERING
    last_seq: int = 0
    waiters: deque[tuple[int, str, int, Outcome]] = field(default_factory=deque)
    appending: bool = False
    queued: bool = False
    task: asyncio.Task[None] | None = None
    sub: Any = None
    start_seq: int = 0  # replay starts after this (a promoted backup has applied the log so far)
    promoted: bool = False  # the state is a backup's replica, already loaded and following
    loading: dict[tuple[str, str], list[tuple[Any, str]]] = field(default_factory=dict)  # read-through: waiting requests
    persist: PersistState = field(default_factory=PersistState)


def new_member_id() -> str:
    return f"{socket.gethostname().split('.')[0][:16]}-{os.getpid()}-{secrets.token_hex(3)}"


class ProcessingUnit:
    """One PU process's engine. Create, `await start()`, then `await stop()`."""

    def __init__(
        self,
        space: Space,
        nats_url: str,
        limits: Limits = DEFAULT_LIMITS,
        replicas: int = 1,
        member_id: str | None = None,
        time_limit: Callable[[], AbstractContextManager[Any]] = nullcontext,
        store: Store | None = None,
    ) -> None:
        through = [m.name for m in space.maps.values() if m.persistence == "write-through"]
        if through and store is None:
            raise ConfigError(f"maps {through} are write-through: run the PU with a store (--store URL)")
        evicting = [m.name for m in space.maps.values() if m.eviction is not None and m.eviction.evicts]
        if evicting and store is None:
            raise ConfigError(f"maps {evicting} evict entries to the store: run the PU with a store (--store URL)")
        self.space = space
        self.store = store
        self.pump: Pump | None = None
        self.nats_url = nats_url
        self.limits = limits
        self.replicas = replicas
        self.member_id = member_id or new_member_id()
        self.time_limit = time_limit
        self.names = Names(space.name)
        self.table = PartitionTable.empty(space.partitions)
        self.table_revision = 0
        self.membership = Membership(limits.heartbeat_timeout_s, limits.lease_s)
        self.lease_until_s = 0.0
        self.handed_from: dict[int, tuple[str, int]] = {}  # partition -> (previous owner, table version that moved it)
        self._member_revision = 0
        self.incarnation = secrets.token_hex(4)  # renewed when this PU rejoins after being declared dead
        self._beat_now = asyncio.Event()
        self.leaving = False
        self.metrics_url: str | None = None
        self.last_info: dict[str, Any] = {}
        self.slots: dict[int, Slot] = {}
        self.started_s = time.time()
        self.counters = {"requests": 0, "messages": 0, "appends": 0, "records": 0, "fenced": 0, "acquired": 0, "released": 0,
                         "rejoins": 0, "failovers": 0, "promoted": 0, "loaded_rows": 0}
        self._out: dict[str, list[bytes]] = {}
        self._flush_scheduled = False
        self._coordinating = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._appending: set[asyncio.Task[None]] = set()
        self._append_queue: deque[Slot] = deque()
        self._stopping = False

    # ---- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.nc = await connect(self.nats_url, f"pu:{self.member_id}")
        self.js = self.nc.jetstream(timeout=self.limits.jetstream_api_timeout_s)
        self.changelog = Changelog(self.nc, self.js, self.names, self.limits.append_timeout_s)
        await self.changelog.start()
        if self.store is not None:
            await self._open_store(self.store)
            self.pump = Pump(self.store, self.changelog, self.space, self.limits, self._on_persisted)
        self.backups = Backups(self.changelog, self.space, self.limits, self.time_limit, self.store)
        self._request_sub = await self.nc.subscribe(self.names.pu_subject(self.member_id), cb=self._on_message)
        await self._bootstrap()  # ends with the first heartbeat: the member is announced once it listens
        if self.pump is not None:
            self._tasks.append(asyncio.create_task(self.pump.run(self._active_slots), name="pump"))
            self._tasks.append(asyncio.create_task(self._prune_backups_loop(), name="prune-backups"))
        if any(m.eviction is not None for m in self.space.maps.values()):
            self._tasks.append(asyncio.create_task(self._eviction_loop(), name="eviction"))
        self._tasks.append(await self.coord.watch(self.coord.members, ">", self._on_member))
        self._tasks.append(await self.coord.watch(self.coord.table, self.names.table_key, self._on_table))
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name="heartbeat"))
        log.info("PU %s serving space %s", self.member_id, self.space.name)

    async def _bootstrap(self, timeout_s: float = 60.0) -> None:
        """Create or open the space's stream and buckets, retrying while JetStream elects its leaders."""
        deadline_s = time.monotonic() + timeout_s
        while True:
            try:
                await ensure_stream(self.js, self.names, self.replicas, 2 * self.limits.append_bytes_max)
                self.coord = await Coordination.open(self.js, self.names, self.replicas, create=True,
                                                     member_ttl_s=max(60.0, 10 * self.limits.heartbeat_timeout_s))
                await self._heartbeat()
                return
            except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError, NoStreamResponseError) as exc:
                if time.monotonic() > deadline_s:
                    raise GridUnavailable(f"JetStream did not answer within {timeout_s}s: {exc}") from exc
                log.info("JetStream not ready yet (%s); retrying", exc)
                await asyncio.sleep(0.25)

    async def _open_store(self, store: Store, timeout_s: float = 60.0) -> None:
        """Connect to the store and create or migrate its tables, retrying while it is unreachable."""
        deadline_s = time.monotonic() + timeout_s
        while True:
            try:
                await store.open()
                return
            except StoreUnavailable as exc:
                if time.monotonic() > deadline_s:
                    raise
                log.warning("store %s unavailable (%s); retrying", store.url, exc)
                await asyncio.sleep(1.0)

    def _active_slots(self) -> list[Slot]:
        return [slot for slot in self.slots.values() if slot.status == ACTIVE]

    async def _prune_backups_loop(self) -> None:
        """Backups learn from the store what their owner persisted, so their unpersisted-writes set stays small."""
        assert self.store is not None
        while True:
            await asyncio.sleep(self.limits.backup_prune_interval_s)
            try:
                for partition, backup in list(self.backups.held.items()):
                    if backup.sub is not None:
                        backup.state.on_persisted((await self.store.progress(partition)).lsn)
            except StoreUnavailable:
                pass  # the next round prunes

    async def _eviction_loop(self) -> None:
        """Expire entries past their TTL (a delete through the log, so backups and the store follow) and drop
        persisted entries from memory where a map is over its bounds or idle (on backups too)."""
        expiries = 0
        while True:
            await asyncio.sleep(self.limits.eviction_interval_s)
            for slot in self._active_slots():
                for map_name, key, version in slot.state.expired(self.limits.eviction_scan_max):
                    expiries += 1
                    outcome = slot.state.delete(f"expire:{self.member_id}:{expiries}", map_name, key, version)
                    if outcome.error is None:
                        slot.state.cache[map_name][3] += 1
                self._schedule_append(slot)
                slot.state.evict(self.limits.eviction_scan_max)
            for backup in list(self.backups.held.values()):
                backup.state.evict(self.limits.eviction_scan_max)

    async def leave(self) -> None:
        """Graceful shutdown: ask the coordinator to move everything this PU owns or backs up to others (live
        migration: each new owner catches up first), wait until the table shows none left, then stop."""
        self.leaving = True
        self._beat_now.set()
        deadline_s = time.monotonic() + self.limits.handoff_timeout_s
        while time.monotonic() < deadline_s:
            others = [m for m in self.membership.live(time.monotonic())
                      if m != self.member_id and not self.membership.info[m].get("leaving")]
            if not others or not (self.table.owned_by(self.member_id) or self.table.backed_up_by(self.member_id)):
                break
            await asyncio.sleep(self.limits.heartbeat_interval_s / 2)
        else:
            log.warning("hand-off not finished within %.0fs; stopping anyway", self.limits.handoff_timeout_s)
        await self.stop()

    async def stop(self) -> None:
        """Leave the grid: stop heartbeating, let in-flight appends finish, hand partitions back."""
        if self._stopping:
            return
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.coord.remove_member(self.member_id, self._member_revision or None)
        except Exception as exc:  # best effort: the heartbeat timeout covers a failed goodbye
            log.warning("could not remove member record: %s", exc)
        self.backups.stop_all()
        if self._appending:
            await asyncio.wait(list(self._appending), timeout=self.limits.append_timeout_s)
        await self._flush_store()
        for partition in list(self.slots):
            self._release(partition, "PU stopping")
        await self._flush_replies()
        await self.changelog.stop()
        await self.nc.drain()
        if self.store is not None:
            await self.store.close()

    async def _flush_store(self) -> None:
        """Graceful stop: persist every unpersisted write of the partitions this PU still owns (bounded)."""
        if self.pump is None:
            return
        deadline_s = time.monotonic() + self.limits.store_flush_on_stop_s
        while time.monotonic() < deadline_s:
            if await self.pump.flush_all(self._active_slots(), retry_now=True):
                return
            await asyncio.sleep(min(1.0, max(0.0, deadline_s - time.monotonic())))
        lagging = sum(len(slot.state.dirty) for slot in self._active_slots())
        log.error("stopping with %d writes the store does not hold yet (it was unavailable for %.0fs); they are in "
                  "the log, and the next owner persists them", lagging, self.limits.store_flush_on_stop_s)

    def statistics(self) -> dict[str, Any]:
        return {
            "member": self.member_id,
            "active": sorted(p for p, s in self.slots.items() if s.status == ACTIVE),
            "recovering": sorted(p for p, s in self.slots.items() if s.status == RECOVERING),
            "entries": sum(s.state.entry_count for s in self.slots.values()),
            "ready_backups": self.backups.ready_partitions(),
            "backup_lag": {str(p): list(lag) for p, lag in self.backups.lag().items()},
            "backups_catching_up": self.backups.catching_up(),
            "backups_waiting": len(self.backups.waiting),
            "leaving": self.leaving,
            "append_backlog_records": sum(len(op.writes) for s in self.slots.values() for op in s.state.unsent),
            "maps": self._map_statistics(),
            **self._store_statistics(),
            "table_version": self.table.version,
            **self.counters,
        }

    def _map_statistics(self) -> dict[str, dict[str, int]]:
        """Per map: entries in memory on this PU's owned partitions; for bounded maps, hits, misses (read through
        from the store), evictions and expirations."""
        maps: dict[str, dict[str, int]] = {name: {"entries": 0} for name in self.space.maps}
        for slot in self.slots.values():
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
        active = self._active_slots()
        return {
            "store": self.store.url if self.store is not None else None,
            "store_available": self.pump.available,
            "write_behind_lag_records": sum(len(slot.state.dirty) for slot in active),
            "write_behind_lag_s": round(max((slot.persist.lag_s(now_s) for slot in active), default=0.0), 3),
            "write_through_waiting": sum(len(slot.persist.waiters) for slot in active),
            **self.pump.counters,
        }

    # ---- membership, table and coordination ----------------------------------------------------------------

    def _member_info(self) -> dict[str, Any]:
        info = {"host": socket.gethostname(), "pid": os.getpid(), "started": self.started_s, "beat": time.time(),
                "heartbeat_timeout_s": self.limits.heartbeat_timeout_s, "incarnation": self.incarnation,
                "metrics_url": self.metrics_url, **self.statistics()}
        self.last_info = info  # replaced whole: the metrics thread reads it without locks
        return info

    async def _heartbeat(self) -> None:
        """Renew the member record by compare-and-set, and with it the read lease. A failed renewal means the
        coordinator declared this PU dead: drop every partition, then join again as a fresh member."""
        sent_at = time.monotonic()
        if self._member_revision == 0:
            self._member_revision = await self.coord.register(self.member_id, self._member_info())
        else:
            revision = await self.coord.renew(self.member_id, self._member_info(), self._member_revision)
            if revision is None:
                current = await self.coord.read_member(self.member_id)
                if current is not None and current[0].get("incarnation") == self.incarnation:
                    # An earlier renewal whose acknowledgement was lost did land: nobody removed us. Adopt its
                    # revision; the lease is renewed by the next heartbeat, not by this one.
                    self._member_revision = current[1]
                    return
                self._on_declared_dead()
                return
            self._member_revision = revision
        lease_until_s = sent_at + self.limits.lease_s
        assert lease_until_s >= self.lease_until_s or self.lease_until_s == 0.0, "leases only grow"
        self.lease_until_s = lease_until_s

    def _on_declared_dead(self) -> None:
        log.warning("PU %s was declared dead while it lived (paused or cut off): dropping its partitions "
                    "and joining again", self.member_id)
        self.counters["rejoins"] += 1
        self.lease_until_s = 0.0
        self._member_revision = 0
        self.incarnation = secrets.token_hex(4)
        self.backups.stop_all()
        for partition in list(self.slots):
            self._release(partition, "declared dead by the coordinator")

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._beat_now.wait(), self.limits.heartbeat_interval_s)
            except asyncio.TimeoutError:
                pass
            self._beat_now.clear()
            try:
                await self._heartbeat()
                await self._coordinate()
                self._reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("heartbeat round failed: %s", exc)

    async def _on_member(self, member_id: str, value: bytes | None, revision: int) -> None:
        if value is None:
            changed = self.membership.remove(member_id)
        else:
            changed = self.membership.observe(member_id, self.coord.decode_member(value), time.monotonic(), revision)
        if changed and not self._stopping:
            await self._coordinate()

    async def _on_table(self, key: str, value: bytes | None, revision: int) -> None:
        if value is None:
            return
        table = self.coord.decode_table(value)
        self._adopt_table(table, revision)

    def _adopt_table(self, table: PartitionTable, revision: int) -> None:
        if table.version <= self.table.version:
            if table.version < self.table.version:
                log.info("ignored table v%d older than v%d", table.version, self.table.version)
            return
        for partition, (old, new) in enumerate(zip(self.table.owners, table.owners)):
            if new == self.member_id and old not in (None, self.member_id):
                self.handed_from[partition] = (old, table.version)
        self.table, self.table_revision = table, revision
        self._reconcile()
        self._beat_now.set()  # tell the new owners at once that this PU runs the new table

    async def _coordinate(self) -> None:
        """If this PU is the coordinator, remove dead members by compare-and-set and write a fair table."""
        async with self._coordinating:
            if self._stopping:
                return
            current = coordinator(self.membership.live(time.monotonic()))
            if current != self.member_id:
                if current is not None:  # every member watches the coordinator, so a crashed one is replaced fast
                    await self._probe_members([current])
                if coordinator(self.membership.live(time.monotonic())) != self.member_id:
                    return
            await self._probe_members([m for m in self.membership.info if m != self.member_id])
            for dead in self.membership.dead(time.monotonic()):
                revision = self.membership.revisions.get(dead)
                if not await self.coord.remove_member(dead, revision):
                    # It heartbeated after all: no table this round, until its heartbeat reaches our watch.
                    log.info("member %s renewed before it could be removed", dead)
                    return
                log.warning("member %s is dead (silent, or gone from NATS past its lease): removed it", dead)
                self.counters["failovers"] += 1
                self.membership.remove(dead)
            live = self.membership.live(time.monotonic())
            info = self.membership.info
            proposal = next_table(
                self.table, live, backup_count=self.space.backup_count,
                leaving=frozenset(m for m in live if info.get(m, {}).get("leaving")),
                ready={m: frozenset(info.get(m, {}).get("ready_backups", ())) for m in live},
                hosts={m: str(info.get(m, {}).get("host", "")) for m in live},
            )
            if proposal is None:
                return
            revision = await self.coord.write_table(proposal, self.table_revision)
            if revision is None:
                table, revision = await self.coord.read_table(self.space.partitions)
                self._adopt_table(table, revision)
            else:
                log.info("wrote table v%d for %d live members", proposal.version, len(live))
                self._adopt_table(proposal, revision)

    async def _probe_members(self, members: list[str]) -> None:
        """Ask NATS whether anyone listens on each member's subject: a crashed PU's subscription is gone at
        once, long before its heartbeats are missed."""
        results = await asyncio.gather(*(self._probe(m) for m in members))
        for member_id, reachable in zip(members, results):
            if not reachable:
                self.membership.mark_unreachable(member_id)

    async def _probe(self, member_id: str) -> bool:
        try:
            await self.nc.request(self.names.pu_subject(member_id), PING, timeout=self.limits.heartbeat_interval_s)
        except NoRespondersError:
            return False
        except Exception:  # a timeout says nothing: the heartbeat timeout decides then
            return True
        return True

    def _reconcile(self) -> None:
        if self._stopping:
            return
        decided = plan(self.table, self.member_id, {p: s.epoch for p, s in self.slots.items()})
        for partition in decided.release:
            self._release(partition, f"table v{self.table.version} gives it to {self.table.owner(partition)}")
        for partition, epoch in decided.acquire:
            if partition in self.slots:
                self._release(partition, f"re-acquiring at epoch {epoch}")
            self._acquire(partition, epoch)
        self.backups.sync(set(self.table.backed_up_by(self.member_id)) - self.slots.keys())

    # ---- acquiring and releasing partitions ----------------------------------------------------------------

    def _acquire(self, partition: int, epoch: int) -> None:
        backup = self.backups.take(partition)
        if backup is not None:
            slot = Slot(partition, epoch, backup.state, start_seq=backup.applied_seq, promoted=True)
            self.counters["promoted"] += 1
        else:
            slot = Slot(partition, epoch, PartitionState(self.space, partition, self.limits, self.time_limit,
                                                         track_dirty=self.store is not None))
        self.slots[partition] = slot
        slot.task = asyncio.create_task(self._recover(slot), name=f"recover:{partition}")

    async def _recover(self, slot: Slot) -> None:
        """Replay the partition's log, then fence every earlier owner with an ownership marker."""
        partition = slot.partition
        try:
            await self._wait_for_handoff(partition)
            if self.store is not None:
                await self._catch_up_with_store(slot)
            seq = await self.changelog.last_sequence(partition)
            seq = await self._replay(slot, slot.start_seq, seq)
            marker = encode_owner_marker(slot.epoch, self.member_id)
            while True:
                slot.state.check_claim(slot.epoch)
                try:
                    slot.last_seq = await self.changelog.append(partition, marker, seq)
                    break
                except Fenced:
                    seq = await self._replay(slot, seq, await self.changelog.last_sequence(partition))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("recovery of partition %d failed (%s); will retry", partition, exc)
            if self.slots.get(partition) is slot:
                del self.slots[partition]
            return
        slot.state.set_owner_epoch(slot.epoch)
        if slot.state.dirty:
            slot.persist.unpersisted_since_s = time.monotonic()
        slot.status = ACTIVE
        slot.sub = await self.nc.subscribe(self.names.partition_subject(partition), cb=self._on_message)
        self.counters["acquired"] += 1

    async def _catch_up_with_store(self, slot: Slot) -> None:
        """A new owner learns what the store holds: a promoted backup forgets the writes persisted since it
        loaded; a fresh state is loaded from the store (the log holds only what the store may lack)."""
        assert self.store is not None
        progress = await self.store.progress(slot.partition)
        slot.persist.lsn = progress.lsn
        if slot.promoted:
            slot.state.on_persisted(progress.lsn)
        else:
            loaded = await load_from_store(self.store, slot.state, progress.lsn, self.limits.store_load_batch_rows)
            self.counters["loaded_rows"] += loaded  # not `+= await`: that reads the counter before awaiting

    async def _wait_for_handoff(self, partition: int) -> None:
        """A partition taken from a live PU is served only once that PU runs the table that moved it (so it no
        longer answers reads for it) or is gone; bounded, because a PU that stays silent is declared dead."""
        previous, version = self.handed_from.pop(partition, (None, 0))
        deadline_s = time.monotonic() + 2 * self.limits.heartbeat_timeout_s
        while previous in self.membership.info and not self.membership.has_adopted(previous, version):
            if time.monotonic() > deadline_s:
                log.warning("partition %d: %s has not confirmed table v%d; taking it anyway (the fence guards "
                            "writes)", partition, previous, version)
                return
            await asyncio.sleep(self.limits.heartbeat_interval_s / 4)

    async def _replay(self, slot: Slot, after_seq: int, until_seq: int) -> int:
        return await self.changelog.replay(
            slot.partition, after_seq, until_seq, lambda seq, message: slot.state.replay(message),
            2 * self.limits.append_bytes_max, self.limits.replay_timeout_s,
        )

    def _release(self, partition: int, reason: str) -> None:
        slot = self.slots.pop(partition, None)
        if slot is None:
            return
        log.info("releasing partition %d: %s", partition, reason)
        self.counters["released"] += 1
        was_recovering = slot.status == RECOVERING
        slot.status = RELEASED
        if was_recovering and slot.task is not None:
            slot.task.cancel()
        if slot.sub is not None:
            asyncio.ensure_future(slot.sub.unsubscribe())
        if not slot.appending:
            self._fail_waiters(slot, NotOwner(f"partition {partition} moved: {reason}"))
        unpersisted = CommitUnknown(f"partition {partition} moved before the store confirmed the write ({reason}); "
                                    "it is committed in the log: retry with the same operation id")
        for _, reply_to, req_id, _ in slot.persist.waiters:
            self._reply(reply_to, protocol.error_reply(req_id, unpersisted))
        slot.persist.waiters.clear()

    # ---- serving requests ----------------------------------------------------------------------------------

    async def _on_message(self, msg: Msg) -> None:
        self.counters["messages"] += 1
        reply_to = msg.reply
        try:
            requests = codec.decode(msg.data, self.limits.request_payload_bytes_max)
            if not isinstance(requests, list) or len(requests) > self.limits.requests_per_message_max:
                raise RequestError(f"a request message is a list of at most {self.limits.requests_per_message_max} requests")
        except SpacegridError as exc:
            log.warning("refused a message on %s: %s", msg.subject, exc)
            if reply_to:
                self._reply(reply_to, protocol.error_reply(protocol.MALFORMED_REQ_ID, exc))
            return
        if not requests:
            if reply_to:
                await self.nc.publish(reply_to, PING)
            return
        reads_ok = time.monotonic() < self.lease_until_s
        touched: set[Slot] = set()
        for request in requests:
            slot = self._serve(request, reply_to, reads_ok)
            if slot is not None:
                touched.add(slot)
        for slot in touched:
            self._schedule_append(slot)

    def _serve(self, request: Any, reply_to: str, reads_ok: bool) -> Slot | None:
        self.counters["requests"] += 1
        req_id = protocol.MALFORMED_REQ_ID
        try:
            req_id, op, partition, name, key, arg1, arg2, op_id = request
            if op == protocol.OP_GET_BACKUP:
                self._serve_backup_read(reply_to, req_id, partition, name, key)
                return None
            slot = self.slots.get(partition)
            if slot is None or slot.status != ACTIVE:
                raise (NotOwner if slot is None else PartitionUnavailable)(
                    f"PU {self.member_id} does not serve partition {partition} (table v{self.table.version})"
                )
            state = slot.state
            if not reads_ok and (op in (protocol.OP_GET, protocol.OP_QUERY, protocol.OP_VERSIONS)
                                 or (op == protocol.OP_EXECUTE and self.space.handler_def(name).read_only)):
                raise PartitionUnavailable(f"PU {self.member_id}'s read lease has expired: it can't vouch that it "
                                           "still owns the partition")
            if op == protocol.OP_GET:
                self._check_route(name, key, partition)
                try:
                    self._reply(reply_to, protocol.entry_reply(req_id, state.get_encoded(name, key)))
                except NotLoaded as missing:
                    self._read_through(slot, missing, request, reply_to)
                return None
            if op == protocol.OP_QUERY:
                self._reply(reply_to, protocol.ok_reply(req_id, state.query(name, arg1)))
                return None
            if op == protocol.OP_VERSIONS:
                page = state.versions(name, arg1, min(int(arg2), self.limits.versions_page_max),
                                      self.limits.versions_page_max)
                self._reply(reply_to, protocol.ok_reply(req_id, {**page, "persisted_lsn": slot.persist.lsn}))
                return None
            if op == protocol.OP_PUT:
                if arg1 is None:
                    raise RequestError("None can't be stored as a value: delete the key instead")
                outcome = state.put(op_id, name, key, arg1, arg2)
            elif op == protocol.OP_DELETE:
                outcome = state.delete(op_id, name, key, arg2)
            elif op == protocol.OP_EXECUTE:
                outcome = state.execute(op_id, name, key, arg1)
            else:
                raise RequestError(f"unknown operation {op!r}")
        except SpacegridError as exc:
            self._reply(reply_to, protocol.error_reply(req_id, exc))
            return None
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            self._reply(reply_to, protocol.error_reply(req_id, RequestError(f"malformed request: {exc}")))
            return None
        if isinstance(outcome.error, NotLoaded):
            self._read_through(slot, outcome.error, request, reply_to)
            return None
        if outcome.wait_lsn <= state.lsn_committed:
            self._answer(slot, reply_to, req_id, outcome)
            return slot if state.unsent else None  # an async write still needs its append
        slot.waiters.append((outcome.wait_lsn, reply_to, req_id, outcome))
        return slot

    def _read_through(self, slot: Slot, missing: NotLoaded, request: Any, reply_to: str) -> None:
        """The request needs a key evicted from memory: read it from the store, then serve the request again
        (requests for a key being read wait behind the first, in order)."""
        item = (missing.map_name, missing.key)
        waiting = slot.loading.get(item)
        if waiting is not None:
            waiting.append((request, reply_to))
            return
        slot.loading[item] = [(request, reply_to)]
        asyncio.get_running_loop().create_task(self._load_key(slot, item))

    async def _load_key(self, slot: Slot, item: tuple[str, str]) -> None:
        assert self.store is not None, "only maps with a store evict"
        map_name, key = item
        failure: SpacegridError | None = None
        try:
            row = await self.store.load_key(map_name, key)
            slot.state.load_key(map_name, key, None if row is None or row.value is None else (row.value, row.version))
        except StoreUnavailable as exc:
            failure = PartitionUnavailable(f"{map_name}[{key!r}] is not in memory and the store is unavailable: {exc}")
        waiting = slot.loading.pop(item, [])
        touched: set[Slot] = set()
        reads_ok = time.monotonic() < self.lease_until_s
        for request, reply_to in waiting:
            if failure is not None:
                self._reply(reply_to, protocol.error_reply(request[0], failure))
                continue
            served = self._serve(request, reply_to, reads_ok)
            if served is not None:
                touched.add(served)
        for served in touched:
            self._schedule_append(served)

    def _serve_backup_read(self, reply_to: str, req_id: int, partition: int, map_name: str, key: str) -> None:
        backup = self.backups.held.get(partition)
        if backup is None or backup.sub is None:
            raise NotOwner(f"PU {self.member_id} holds no backup of partition {partition} (table v{self.table.version})")
        self._check_route(map_name, key, partition)
        lag_records, lag_s = backup.lag(time.monotonic())
        try:
            entry = backup.state.get_encoded(map_name, key)
        except NotLoaded:
            raise PartitionUnavailable(f"{map_name}[{key!r}] was evicted from the backup's memory: read the owner")
        self._reply(reply_to, protocol.backup_entry_reply(req_id, entry, lag_records, round(lag_s, 6)))

    def _check_route(self, map_name: str, key: str, partition: int) -> None:
        if self.space.partition_of(map_name, key) != partition:
            raise RequestError(f"key {key!r} of {map_name!r} does not belong to partition {partition}")

    # ---- group commit --------------------------------------------------------------------------------------

    def _schedule_append(self, slot: Slot) -> None:
        """Queue the partition for an append; at most appends_in_flight_max run at once, so that under load each
        append carries more writes (group commit across the wait) and the log server does fewer, larger appends."""
        if slot.appending or slot.queued or slot.status != ACTIVE or not slot.state.unsent:
            return
        slot.queued = True
        self._append_queue.append(slot)
        self._start_appends()

    def _start_appends(self) -> None:
        loop = asyncio.get_running_loop()
        while self._append_queue and len(self._appending) < self.limits.appends_in_flight_max:
            slot = self._append_queue.popleft()
            slot.queued = False
            if slot.status != ACTIVE or not slot.state.unsent:
                continue
            slot.appending = True
            task = loop.create_task(self._append_one(slot))
            self._appending.add(task)
            task.add_done_callback(self._on_append_done)

    def _on_append_done(self, task: asyncio.Task[None]) -> None:
        self._appending.discard(task)
        self._start_appends()

    async def _append_one(self, slot: Slot) -> None:
        """Append one message of the partition's pending writes, fenced on its previous one; then queue the rest."""
        batch = slot.state.take_append()
        assert batch is not None
        try:
            slot.last_seq = await self.changelog.append(slot.partition, batch.payload, slot.last_seq)
        except SpacegridError as exc:
            slot.appending = False
            self._on_append_failed(slot, exc)
            return
        slot.appending = False
        self.counters["appends"] += 1
        self.counters["records"] += batch.record_count
        self._release_waiters(slot, slot.state.on_append_committed())
        if slot.state.dirty and slot.persist.unpersisted_since_s is None:
            slot.persist.unpersisted_since_s = time.monotonic()
        if slot.status == ACTIVE:
            self._schedule_append(slot)
        else:
            self._fail_waiters(slot, NotOwner(f"partition {slot.partition} moved before these writes were appended"))

    def _on_append_failed(self, slot: Slot, failure: SpacegridError) -> None:
        if isinstance(failure, Fenced):
            self.counters["fenced"] += 1
            log.warning("partition %d: deposed (%s); dropping it and its uncommitted writes", slot.partition, failure)
            error: SpacegridError = failure
        else:
            log.warning("partition %d: append outcome unknown (%s); rebuilding it from the log", slot.partition, failure)
            error = CommitUnknown(str(failure))
        self._fail_waiters(slot, error)
        if self.slots.get(slot.partition) is slot:
            self._release(slot.partition, f"append failed: {failure}")
        self._reconcile()

    def _release_waiters(self, slot: Slot, committed_lsn: int) -> None:
        waiters = slot.waiters
        while waiters and waiters[0][0] <= committed_lsn:
            _, reply_to, req_id, outcome = waiters.popleft()
            self._answer(slot, reply_to, req_id, outcome)

    def _answer(self, slot: Slot, reply_to: str, req_id: int, outcome: Outcome) -> None:
        """Reply to a committed operation; a write-through one only once the store holds it too."""
        if not outcome.durable or outcome.error is not None or outcome.wait_lsn <= slot.persist.lsn:
            self._reply_outcome(reply_to, req_id, outcome)
            return
        assert self.pump is not None, "write-through outcomes exist only with a store"
        slot.persist.waiters.append((outcome.wait_lsn, reply_to, req_id, outcome))
        self.pump.kick.set()

    def _on_persisted(self, slot: Slot) -> None:
        """The pump advanced the partition's store position: answer the write-through writes it covers."""
        lsn = slot.persist.lsn
        waiting = slot.persist.waiters
        slot.persist.waiters = [waiter for waiter in waiting if waiter[0] > lsn]
        for wait_lsn, reply_to, req_id, outcome in waiting:
            if wait_lsn <= lsn:
                self._reply_outcome(reply_to, req_id, outcome)

    def _fail_waiters(self, slot: Slot, error: SpacegridError) -> None:
        while slot.waiters:
            _, reply_to, req_id, _ = slot.waiters.popleft()
            self._reply(reply_to, protocol.error_reply(req_id, error))

    # ---- replies, batched per reply subject per event-loop tick ---------------------------------------------

    def _reply_outcome(self, reply_to: str, req_id: int, outcome: Outcome) -> None:
        if outcome.error is not None:
            self._reply(reply_to, protocol.error_reply(req_id, outcome.error))
        else:
            self._reply(reply_to, protocol.ok_reply(req_id, outcome.value))

    def _reply(self, reply_to: str, item: bytes) -> None:
        if not reply_to:
            return
        self._out.setdefault(reply_to, []).append(item)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().create_task(self._flush_replies())

    async def _flush_replies(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, {}
        for reply_to, items in out.items():
            for message in protocol.chunks(items, self.limits.request_payload_bytes_max,
                                          self.limits.requests_per_message_max):
                await self.nc.publish(reply_to, message)
