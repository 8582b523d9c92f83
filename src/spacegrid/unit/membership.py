"""Membership of one PU: its heartbeat and read lease, the members and the partition table it watches, and, when
it is the coordinator, removing dead members and writing a fair table, both by compare-and-set.

A PU writes only its own member record. The coordinator removes a dead member's record by deleting the message of
the revision it saw (Coordination.remove_member), which leaves no delete marker: the other members' watches do not
report it. They keep the removed member in their view, dead by its silence (live() and dead() go by silence alone),
until they read that its record is gone (`_forget_removed`, each round; `wait_adopted`, at once). A graceful leave
deletes the member's own record through KV, a delete marker every watch reports."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from spacegrid.core.epochs import EpochOwners
from spacegrid.core.ownership import Membership, coordinator, next_table
from spacegrid.engine.coordination import Coordination
from spacegrid.engine.events import NO_EVENTS, EventSink
from spacegrid.engine.subjects import Names
from spacegrid.engine.transport import Transport
from spacegrid.errors import ConfigError
from spacegrid.limits import MEMBER_TAKEOVER_TIMEOUTS, Limits
from spacegrid.partitioning import PartitionTable
from spacegrid.unit.serving import PING

log = logging.getLogger("spacegrid.membership")
TABLE_EVENT_MOVES_MAX = 64  # partitions listed in a table event (the count is always whole)


class MembershipAgent:
    """Heartbeats every `limits.heartbeat_interval_s` (or at once after a table change), renewing the read lease.
    `on_table()` runs after every newer table is adopted and after every heartbeat round (to retry what failed);
    `on_declared_dead()` when a renewal finds the record removed (this PU was paused or cut off)."""

    def __init__(self, transport: Transport, coord: Coordination, names: Names, member_id: str, limits: Limits,
                 partitions: int, backup_count: int, info: Callable[[], dict[str, Any]],
                 on_table: Callable[[], None], on_declared_dead: Callable[[], None],
                 epochs: EpochOwners | None = None) -> None:
        self.transport = transport
        self.coord = coord
        self.names = names
        self.member_id = member_id
        self.limits = limits
        self.backup_count = backup_count
        self.info = info
        self.on_table = on_table
        self.on_declared_dead = on_declared_dead
        self.table = PartitionTable.empty(partitions)
        self.epochs = EpochOwners(partitions) if epochs is None else epochs  # owners by epoch of every table adopted
        self.table_revision = 0
        self.membership = Membership(limits.heartbeat_timeout_s, limits.lease_s)
        self.lease_until_s = 0.0
        self.incarnation = secrets.token_hex(4)  # renewed when this PU rejoins after being declared dead
        self.handed_from: dict[int, tuple[str, int]] = {}  # partition -> (previous owner, table version that moved it)
        self.leaving = False
        self.stopping = False
        self.counters = {"rejoins": 0, "failovers": 0}
        self._revision = 0
        self._members_changed_at_s = time.monotonic()
        self._beat_now = asyncio.Event()
        self._coordinating = asyncio.Lock()
        self.events: EventSink = NO_EVENTS
        self.liveness: Any = None  # a unit.liveness.LivenessThread renewing the record off this loop, once attached

    def lease_valid(self) -> bool:
        return time.monotonic() < self.lease_until_s

    def beat_now(self) -> None:
        self._beat_now.set()

    async def _register(self) -> int:
        """Create this member's record. One already there under this member id is an earlier incarnation's (a
        container restarted with its pod's credential, before the grid declared the old process dead): once it
        has gone unrenewed for heartbeat_timeout_s (its read lease long over: lease_s < heartbeat_timeout_s) it is
        removed as the coordinator removes a dead member's, and this one is created. A record still being renewed
        after MEMBER_TAKEOVER_TIMEOUTS heartbeat timeouts is another live process with this identity: ConfigError."""
        limits = self.limits
        deadline_s = time.monotonic() + MEMBER_TAKEOVER_TIMEOUTS * limits.heartbeat_timeout_s
        seen: tuple[int, float] | None = None  # the old record's revision, and since when it has not changed
        while True:
            revision = await self.coord.register(self.member_id, self.info())
            if revision is not None:
                return revision
            current = await self.coord.read_member(self.member_id)
            now_s = time.monotonic()
            if current is not None:
                if seen is None or seen[0] != current[1]:
                    seen = (current[1], now_s)
                elif now_s - seen[1] >= limits.heartbeat_timeout_s:
                    log.warning("member id %s: an earlier incarnation's record (pid %s) went unrenewed for %.1f s: "
                                "removing it to join", self.member_id, current[0].get("pid"), now_s - seen[1])
                    await self.coord.remove_member(self.member_id, current[1])
                    continue
            if now_s > deadline_s:
                holder = "" if current is None else f" (pid {current[0].get('pid')} on {current[0].get('host')})"
                raise ConfigError(f"member id {self.member_id} is held by a live PU{holder} that keeps renewing it: "
                                  "two PUs can't share one member id; give each its own credential")
            await asyncio.sleep(limits.heartbeat_interval_s)

    async def heartbeat(self, wake_liveness: bool = False) -> None:
        """Renew the member record by compare-and-set, and with it the read lease. A failed renewal means the
        coordinator declared this PU dead: drop every partition, then join again as a fresh member. With a
        liveness thread attached, this loop only registers and hands the thread each new snapshot to publish
        (`wake_liveness`: at once, after a table change); the thread renews."""
        if self.liveness is not None and self._revision != 0:
            self.liveness.publish(self.info())
            if wake_liveness:
                self.liveness.beat_now()
            return
        sent_at_s = time.monotonic()
        if self._revision == 0:
            self._revision = await self._register()
            self.events.emit("member_rejoined" if self.counters["rejoins"] else "member_joined",
                             incarnation=self.incarnation)
            if self.liveness is not None:
                await self.liveness.start(self._revision, self.info())
        else:
            revision = await self.coord.renew(self.member_id, self.info(), self._revision)
            if revision is None:
                current = await self.coord.read_member(self.member_id)
                if current is not None and current[0].get("incarnation") == self.incarnation:
                    # An earlier renewal whose acknowledgement was lost did land: nobody removed us. Adopt its
                    # revision; the lease is renewed by the next heartbeat, not by this one.
                    self._revision = current[1]
                    return
                self._declared_dead()
                return
            self._revision = revision
        lease_until_s = sent_at_s + self.limits.lease_s
        assert lease_until_s >= self.lease_until_s or self.lease_until_s == 0.0, "leases only grow"
        self.lease_until_s = lease_until_s

    def renewed(self, revision: int, sent_at_s: float) -> None:
        """From the liveness thread: the record was renewed at `revision`, the renewal sent at `sent_at_s`."""
        self._revision = revision
        self.lease_until_s = max(self.lease_until_s, sent_at_s + self.limits.lease_s)  # leases only grow

    def removed(self) -> None:
        """From the liveness thread, on this loop: a renewal found the record removed."""
        if not self.stopping:
            self._declared_dead()

    def _declared_dead(self) -> None:
        log.warning("PU %s was declared dead while it lived (paused or cut off): dropping its partitions "
                    "and joining again", self.member_id)
        self.counters["rejoins"] += 1
        self.lease_until_s = 0.0
        self._revision = 0
        self.incarnation = secrets.token_hex(4)
        self.on_declared_dead()

    async def run(self) -> None:
        """The heartbeat loop, until `stopping` (a flag, not only cancellation: on Python 3.11 a cancellation
        that meets a completing `asyncio.wait_for`, in nats-py too, is swallowed, and the loop would go on)."""
        while not self.stopping:
            try:
                async with asyncio.timeout(self.limits.heartbeat_interval_s):
                    await self._beat_now.wait()
            except TimeoutError:
                pass
            woken = self._beat_now.is_set()
            self._beat_now.clear()
            try:
                await self.heartbeat(wake_liveness=woken)
                await self.coordinate()
                self.on_table()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("heartbeat round failed: %s", exc)

    async def goodbye(self) -> None:
        """Delete this member's record (best effort: the heartbeat timeout covers a failed goodbye)."""
        self.events.emit("member_left")
        try:
            await self.coord.leave(self.member_id, self._revision or None)
        except Exception as exc:
            log.warning("could not remove member record: %s", exc)

    # ---- watches -------------------------------------------------------------------------------------------

    async def on_member(self, member_id: str, value: bytes | None, revision: int) -> None:
        if value is None:
            changed = self.membership.remove(member_id)
        else:
            changed = self.membership.observe(member_id, self.coord.decode_member(value), time.monotonic(), revision)
        if changed:
            self._members_changed_at_s = time.monotonic()
        if changed and not self.stopping:
            await self.coordinate()

    async def on_table_entry(self, key: str, value: bytes | None, revision: int) -> None:
        if value is not None:
            self.adopt(self.coord.decode_table(value), revision)

    def adopt(self, table: PartitionTable, revision: int) -> None:
        if table.version <= self.table.version:
            if table.version < self.table.version:
                log.info("ignored table v%d older than v%d", table.version, self.table.version)
            return
        for partition, (old, new) in enumerate(zip(self.table.owners, table.owners)):
            if new == self.member_id and old not in (None, self.member_id):
                self.handed_from[partition] = (old, table.version)
        self.table, self.table_revision = table, revision
        self.epochs.observe(table)
        self.on_table()
        self._beat_now.set()  # tell the new owners at once that this PU runs the new table

    def others_live(self) -> list[str]:
        """Live members other than this one that are not leaving."""
        return [m for m in self.membership.live(time.monotonic())
                if m != self.member_id and not self.membership.info[m].get("leaving")]

    def previous_owner(self, partition: int) -> tuple[str, int] | None:
        """The PU this partition was taken from, if this PU has not seen it removed, and the table version that
        moved it (consumed)."""
        previous = self.handed_from.pop(partition, None)
        if previous is None or previous[0] not in self.membership.info:
            return None
        return previous

    async def wait_adopted(self, member_id: str, table_version: int) -> None:
        """Until `member_id` runs `table_version` (so it no longer answers reads for what it moved) or is gone: its
        record deleted (it left) or removed (the coordinator declared it dead, which no watch reports, so the
        record is read: at once, then every heartbeat interval). Silence alone is not gone here: this PU's view
        may be behind (its loop held). Bounded, because a PU that stays silent is declared dead."""
        now_s = time.monotonic()
        deadline_s = now_s + 2 * self.limits.heartbeat_timeout_s
        read_at_s = now_s - self.limits.heartbeat_interval_s
        while member_id in self.membership.info and not self.membership.has_adopted(member_id, table_version):
            now_s = time.monotonic()
            if now_s > deadline_s:
                log.warning("%s has not confirmed table v%d; going ahead (the fence guards writes)", member_id,
                            table_version)
                return
            if now_s - read_at_s >= self.limits.heartbeat_interval_s:
                read_at_s = now_s
                if await self._forget_if_removed(member_id):
                    return
            await asyncio.sleep(self.limits.heartbeat_interval_s / 4)

    # ---- the coordinator -----------------------------------------------------------------------------------

    def is_coordinator(self) -> bool:
        """This PU is the live member that coordinates (and trims the log) as far as it knows."""
        return coordinator(self.membership.live(time.monotonic())) == self.member_id

    async def coordinate(self) -> None:
        """Forget silent members whose record is gone; if this PU is the coordinator, remove dead members by
        compare-and-set and write a fair table."""
        async with self._coordinating:
            if self.stopping:
                return
            await self._forget_removed()
            current = coordinator(self.membership.live(time.monotonic()))
            if current != self.member_id:
                if current is not None:  # every member watches the coordinator, so a crashed one is replaced fast
                    await self._probe_members([current])
                if coordinator(self.membership.live(time.monotonic())) != self.member_id:
                    return
            await self._probe_members([m for m in self.membership.info if m != self.member_id])
            if not await self._remove_dead():
                return
            live = self.membership.live(time.monotonic())
            if self.table.version == 0 and time.monotonic() - self._members_changed_at_s < self.limits.first_table_settle_s:
                return  # a new grid: PUs starting together all register first, so each loads its share once
            info = self.membership.info
            proposal = next_table(
                self.table, live, backup_count=self.backup_count,
                leaving=frozenset(m for m in live if info.get(m, {}).get("leaving")),
                ready={m: frozenset(info.get(m, {}).get("ready_backups", ())) for m in live},
                hosts={m: str(info.get(m, {}).get("host", "")) for m in live},
            )
            if proposal is None:
                return
            previous = self.table  # the table watch may adopt the proposal before write_table returns
            revision = await self.coord.write_table(proposal, self.table_revision)
            if revision is None:
                table, revision = await self.coord.read_table(self.table.partition_count)
                self.adopt(table, revision)
            else:
                log.info("wrote table v%d for %d live members", proposal.version, len(live))
                moved = {p: [old, new] for p, (old, new) in enumerate(zip(previous.owners, proposal.owners))
                         if old != new}
                if moved:  # a table that only places backups is not on the timeline
                    self.events.emit("table", version=proposal.version, members=len(live), moved=len(moved),
                                     moves=dict(list(moved.items())[:TABLE_EVENT_MOVES_MAX]))
                self.adopt(proposal, revision)

    async def _forget_removed(self) -> None:
        """Drop from this PU's view the members dead by their silence whose record is gone: removed by a
        coordinator (no watch reports that), or expired. A member whose record is still there stays, dead, until
        the coordinator removes it or it heartbeats again."""
        for member_id in self.membership.dead(time.monotonic()):
            if await self._forget_if_removed(member_id):
                log.info("member %s is gone (its record was removed)", member_id)

    async def _forget_if_removed(self, member_id: str) -> bool:
        """Forget `member_id` if it has no record, unless it was heard of during the read (it registered again):
        True if forgotten."""
        heard_at_s = self.membership.last_seen_s.get(member_id)
        if await self.coord.member_revision(member_id) != 0 or self.membership.last_seen_s.get(member_id) != heard_at_s:
            return False
        self.membership.remove(member_id)
        return True

    async def _remove_dead(self) -> bool:
        """Remove every dead member's record by compare-and-set on the revision last seen; False if one
        heartbeated meanwhile (no table this round)."""
        for dead in self.membership.dead(time.monotonic()):
            if not await self.coord.remove_member(dead, self.membership.revisions[dead]):
                log.info("member %s renewed before it could be removed", dead)
                return False
            log.warning("member %s is dead (silent, or gone from NATS past its lease): removed it", dead)
            self.events.emit("member_dead", dead=dead,
                             silent_s=round(time.monotonic() - self.membership.last_seen_s[dead], 3))
            self.counters["failovers"] += 1
            self.membership.remove(dead)
        return True

    async def _probe_members(self, members: list[str]) -> None:
        """Ask NATS whether anyone listens on the subject of each member silent for limits.probe_silent_s: a
        crashed PU's subscription is gone at once, so it is dead at the end of its lease instead of after the
        heartbeat timeout. Members heard of lately are not asked (no message each heartbeat round per member)."""
        members = self.membership.silent(members, time.monotonic(), self.limits.probe_silent_s)
        if not members:
            return
        results = await asyncio.gather(*(self.transport.probe(self.names.pu_subject(m), PING,
                                                              self.limits.heartbeat_interval_s) for m in members))
        for member_id, reachable in zip(members, results):
            if reachable is False:
                self.membership.mark_unreachable(member_id)
