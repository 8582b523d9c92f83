"""Ownership decisions, pure: who is alive, who coordinates, the fair assignment, and what a PU must acquire or release."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from spacegrid.partitioning import PartitionTable


class Membership:
    """Members as this observer last heard of them. Liveness uses the observer's own monotonic clock, so
    clock skew between hosts never matters: a member is alive while its heartbeats keep arriving.

    A member is dead once it has not been heard of for timeout_s, or once NATS said nobody listens on its
    subject (it crashed or lost its connection) and it has not been heard of for lease_s: by then its read
    lease, which it measures from before sending its last heartbeat, has run out.

    A member stays known (`info`, `dead()`) until `remove`: on its goodbye (a delete marker), or once the observer
    learns that its record is gone. The coordinator's removal of a dead member deletes its record's message and
    leaves no marker, so the other observers keep it, dead by its silence, until they read the record (the
    driver's job: unit.membership). live() and dead() go by silence alone, so they are right without it."""

    def __init__(self, timeout_s: float, lease_s: float | None = None) -> None:
        assert timeout_s > 0
        self.timeout_s = timeout_s
        self.lease_s = timeout_s if lease_s is None else lease_s
        assert 0 < self.lease_s <= self.timeout_s
        self.info: dict[str, dict[str, Any]] = {}
        self.last_seen_s: dict[str, float] = {}
        self.revisions: dict[str, int] = {}
        self.unreachable: set[str] = set()

    def observe(self, member_id: str, info: dict[str, Any], now_s: float, revision: int = 0) -> bool:
        """Record a heartbeat; True when the member is new to this observer."""
        is_new = member_id not in self.info
        self.info[member_id] = info
        self.last_seen_s[member_id] = now_s
        self.revisions[member_id] = revision
        self.unreachable.discard(member_id)
        return is_new

    def mark_unreachable(self, member_id: str) -> None:
        """NATS answered "no responders" on the member's subject."""
        if member_id in self.info:
            self.unreachable.add(member_id)

    def remove(self, member_id: str) -> bool:
        self.last_seen_s.pop(member_id, None)
        self.revisions.pop(member_id, None)
        self.unreachable.discard(member_id)
        return self.info.pop(member_id, None) is not None

    def _is_dead(self, member_id: str, now_s: float) -> bool:
        silent_s = now_s - self.last_seen_s[member_id]
        return silent_s > self.timeout_s or (member_id in self.unreachable and silent_s > self.lease_s)

    def silent(self, members: list[str], now_s: float, silent_s: float) -> list[str]:
        """Of `members`, those known here and not heard of for `silent_s` or longer."""
        return [m for m in members if m in self.last_seen_s and now_s - self.last_seen_s[m] >= silent_s]

    def live(self, now_s: float) -> list[str]:
        return sorted(m for m in self.last_seen_s if not self._is_dead(m, now_s))

    def dead(self, now_s: float) -> list[str]:
        return sorted(m for m in self.last_seen_s if self._is_dead(m, now_s))

    def has_adopted(self, member_id: str, table_version: int) -> bool:
        """The member reported running with this table version or a newer one."""
        return int(self.info.get(member_id, {}).get("table_version", 0)) >= table_version


def coordinator(live_members: list[str]) -> str | None:
    """The live member with the smallest id proposes tables; compare-and-set in KV settles any race."""
    return min(live_members) if live_members else None


def fair_assignment(table: PartitionTable, live_members: list[str]) -> tuple[str | None, ...]:
    """Every live member gets floor or ceil of partitions/members; current owners keep what fits their quota."""
    if not live_members:
        return table.owners
    members = sorted(set(live_members))
    n, m = table.partition_count, len(members)
    held = {member: 0 for member in members}
    for owner in table.owners:
        if owner in held:
            held[owner] += 1
    by_load = sorted(members, key=lambda member: (-held[member], member))
    quota = {member: n // m + (1 if i < n % m else 0) for i, member in enumerate(by_load)}
    kept = {member: 0 for member in members}
    owners: list[str | None] = []
    for owner in table.owners:
        if owner in kept and kept[owner] < quota[owner]:
            kept[owner] += 1
            owners.append(owner)
        else:
            owners.append(None)
    for partition, owner in enumerate(owners):
        if owner is None:
            taker = max(members, key=lambda member: (quota[member] - kept[member], -members.index(member)))
            kept[taker] += 1
            owners[partition] = taker
    assert all(kept[member] == quota[member] for member in members)
    return tuple(owners)


def place_backups(owners: tuple[str | None, ...], current: PartitionTable, members: list[str], backup_count: int,
                  pinned: dict[int, str], hosts: Mapping[str, str]) -> tuple[tuple[str, ...], ...]:
    """backup_count backups per partition on members other than its owner: current backups stay while their holder
    is under its share (so backups rebalance as members come and go); gaps go to the members after the owner in
    the ring of members (sorted), under their share, on another host than the owner where one exists. The ring
    keeps each PU's backups on the partitions of few owners, so that it follows few owners' log subjects (ADR 0009).
    `pinned` adds a member as an extra backup of a partition (the target of a live move, catching up before the
    flip)."""
    load = {member: 0 for member in members}
    share_max = -(-len(owners) * backup_count // len(members)) if len(members) > 1 else 0
    groups: list[list[str]] = []
    for partition, owner in enumerate(owners):
        keep = [b for b in current.backups_of(partition) if b in load and b != owner and load[b] < share_max]
        keep = keep[:backup_count]
        groups.append(keep)
        for b in keep:
            load[b] += 1
    ring = {member: i for i, member in enumerate(members)}
    for partition, owner in enumerate(owners):
        group = groups[partition]
        owner_host = hosts.get(owner or "", None)
        start = ring.get(owner or "", -1)

        def preference(m: str) -> tuple[bool, bool, int, int, str]:
            return (owner_host is not None and hosts.get(m) == owner_host, load[m] >= share_max,
                    (ring[m] - start) % len(members), load[m], m)

        while len(group) < backup_count:
            candidates = [m for m in members if m != owner and m not in group]
            if not candidates:
                break
            pick = min(candidates, key=preference)
            group.append(pick)
            load[pick] += 1
    _even_out(owners, groups, load, len(owners) * backup_count // len(members))
    for partition, owner in enumerate(owners):
        target = pinned.get(partition)
        if target is not None and target != owner and target not in groups[partition]:
            groups[partition].append(target)
    return tuple(tuple(group) for group in groups)


def _even_out(owners: tuple[str | None, ...], groups: list[list[str]], load: dict[str, int], share_min: int) -> None:
    """Move backups to members under their share (the floor) from the members holding the most, above it. Kept
    backups fill the old members first, and a member can't back up its own partitions, so a member that joined and
    took partitions can otherwise be left holding no backup while another holds the new member's partitions'
    backups on top of its own share."""
    for taker in sorted(load, key=lambda m: (load[m], m)):
        for partition, group in enumerate(groups):
            if load[taker] >= share_min:
                break
            if taker == owners[partition] or taker in group:
                continue
            donors = [m for m in group if load[m] > share_min]
            if donors:
                donor = max(donors, key=lambda m: (load[m], m))
                group[group.index(donor)] = taker
                load[donor] -= 1
                load[taker] += 1
    assert sum(load.values()) == sum(len(group) for group in groups), "moving a backup keeps the count"


def next_table(table: PartitionTable, live_members: list[str], backup_count: int = 0,
               leaving: frozenset[str] = frozenset(), ready: Mapping[str, frozenset[int]] | None = None,
               hosts: Mapping[str, str] | None = None) -> PartitionTable | None:
    """The table the coordinator should write, or None when the current one already fits.

    Members in `leaving` get nothing new and hand everything off. With `ready` (member -> partitions it holds as a
    caught-up backup), a partition moves from a live owner only once its new owner is a ready backup of it; until
    then the new owner is added as a backup to catch up (live migration). A dead owner's partitions move at once,
    to a backup where there is one (promotion: no replay), even past that member's fair share, which later live
    moves restore."""
    placeable = [m for m in live_members if m not in leaving]
    if not placeable:
        return None
    alive = set(live_members)
    target = list(fair_assignment(table, placeable))
    for partition, current in enumerate(table.owners):
        promotable = [b for b in table.backups_of(partition) if b in placeable]
        if current is not None and current not in alive and promotable:
            target[partition] = promotable[0]
    owners = list(target)
    pinned: dict[int, str] = {}
    for partition, (current, wanted) in enumerate(zip(table.owners, target)):
        moving_live = current is not None and current != wanted and current in alive
        if moving_live and ready is not None and partition not in ready.get(wanted or "", frozenset()):
            owners[partition] = current
            pinned[partition] = wanted or ""
    final_owners = tuple(owners)
    backups = place_backups(final_owners, table, placeable, backup_count, pinned, hosts or {})
    if not any(backups):
        backups = ()
    if final_owners == table.owners and backups == table.backups:
        return None
    return table.successor(final_owners, backups)


@dataclass(frozen=True, slots=True)
class OwnershipPlan:
    acquire: tuple[tuple[int, int], ...]  # (partition, epoch)
    release: tuple[int, ...]


def plan(table: PartitionTable, member_id: str, held: dict[int, int]) -> OwnershipPlan:
    """What a PU holding `held` (partition -> epoch) must do to match `table`."""
    acquire = []
    release = []
    for partition, (owner, epoch) in enumerate(zip(table.owners, table.epochs)):
        current = held.get(partition)
        if owner == member_id:
            if current is None or current < epoch:
                acquire.append((partition, epoch))
        elif current is not None:
            release.append(partition)
    return OwnershipPlan(tuple(acquire), tuple(release))
