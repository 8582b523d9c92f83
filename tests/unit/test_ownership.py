"""Unit tests of the pure ownership decisions: liveness, coordinator, fair assignment, acquire/release plans."""

import random
from collections import Counter

import pytest

from spacegrid.core.ownership import Membership, OwnershipPlan, coordinator, fair_assignment, next_table, plan
from spacegrid.limits import Limits
from spacegrid.partitioning import PartitionTable


def members(m):
    return [f"pu-{i:02d}" for i in range(m)]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 63, 64, 65, 100, 128, 255])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 10, 16])
def test_fair_assignment_from_empty_table_gives_floor_or_ceil(n, m):
    """From an empty table each of m members gets floor(n/m) or ceil(n/m) partitions, and none is left unowned."""
    live = members(m)
    owners = fair_assignment(PartitionTable.empty(n), live)
    assert len(owners) == n
    assert None not in owners
    counts = Counter(owners)
    assert sum(counts.values()) == n
    assert set(counts.values()) <= {n // m, -(-n // m)}
    assert set(counts) <= set(live)
    if n >= m:
        assert set(counts) == set(live)


@pytest.mark.parametrize("seed", range(20))
def test_fair_assignment_from_arbitrary_table_is_fair(seed):
    """From a random table (owners live, dead or None) the assignment is fair over the live members."""
    rng = random.Random(seed)
    n = rng.randint(1, 200)
    everyone = members(12)
    owners = tuple(rng.choice(everyone + [None]) for _ in range(n))
    live = rng.sample(everyone, rng.randint(1, 12))
    table = PartitionTable(5, owners, (1,) * n)
    result = fair_assignment(table, live)
    counts = Counter(result)
    assert None not in result
    assert set(counts) <= set(live)
    assert set(counts.values()) <= {n // len(live), -(-n // len(live))}


def test_adding_a_member_moves_only_its_share_to_it():
    """Adding a 3rd member to a fair 2-member 64-partition table moves 21 partitions, all to the new member."""
    before = PartitionTable.empty(64).successor(fair_assignment(PartitionTable.empty(64), ["a", "b"]))
    after = fair_assignment(before, ["a", "b", "c"])
    moved = [p for p in range(64) if after[p] != before.owners[p]]
    assert len(moved) == 21
    assert all(after[p] == "c" for p in moved)
    assert sorted(Counter(after).values()) == [21, 21, 22]


def test_orphans_of_a_dead_member_are_spread_over_survivors():
    """When a member dies its partitions go to the survivors, evenly, and the survivors keep theirs."""
    table = PartitionTable.empty(64).successor(fair_assignment(PartitionTable.empty(64), ["a", "b", "c"]))
    orphans = table.owned_by("c")
    after = fair_assignment(table, ["a", "b"])
    for p in range(64):
        if table.owners[p] != "c":
            assert after[p] == table.owners[p]
    assert {after[p] for p in orphans} == {"a", "b"}
    assert Counter(after) == {"a": 32, "b": 32}


def test_unowned_partitions_are_filled_without_moving_others():
    """Partitions with no owner are given out while fairly owned partitions stay where they are."""
    table = PartitionTable(2, ("a", "b", None, None), (1, 1, 0, 0))
    after = fair_assignment(table, ["a", "b"])
    assert after[:2] == ("a", "b")
    assert Counter(after) == {"a": 2, "b": 2}


def test_fair_assignment_is_deterministic():
    """The same table and live set give the same assignment, whatever the order or duplication of the live list."""
    rng = random.Random(7)
    owners = tuple(rng.choice(["a", "b", "c", "d", None]) for _ in range(64))
    table = PartitionTable(9, owners, (2,) * 64)
    first = fair_assignment(table, ["c", "a", "e"])
    assert fair_assignment(table, ["a", "c", "e"]) == first
    assert fair_assignment(table, ["e", "c", "a", "a"]) == first
    assert fair_assignment(PartitionTable(9, owners, (2,) * 64), ["a", "c", "e"]) == first


def test_fair_assignment_without_live_members_keeps_the_table():
    """With no live member the owners are left as they are."""
    table = PartitionTable(3, ("a", None, "b"), (1, 0, 1))
    assert fair_assignment(table, []) == table.owners


def test_next_table_is_none_when_already_fair():
    """next_table returns None when the table is already a fair assignment of the live members."""
    table = PartitionTable.empty(64).successor(fair_assignment(PartitionTable.empty(64), ["a", "b", "c"]))
    assert next_table(table, ["a", "b", "c"]) is None
    assert next_table(table, ["c", "b", "a"]) is None


def test_next_table_is_the_successor_when_unfair():
    """next_table returns the successor: version + 1, epochs bumped exactly where owners moved."""
    table = PartitionTable.empty(64).successor(fair_assignment(PartitionTable.empty(64), ["a", "b"]))
    nxt = next_table(table, ["a", "b", "c"])
    assert nxt is not None
    assert nxt.version == table.version + 1
    assert nxt.owners == fair_assignment(table, ["a", "b", "c"])
    for p in range(64):
        changed = nxt.owners[p] != table.owners[p]
        assert nxt.epochs[p] == table.epochs[p] + (1 if changed else 0)
    assert next_table(nxt, ["a", "b", "c"]) is None


def test_plan_acquires_owned_partitions_not_held_and_releases_the_others():
    """plan lists (partition, epoch) to acquire for owned partitions not held, and held partitions owned by others."""
    table = PartitionTable(4, ("me", "other", "me", None, "other"), (3, 2, 5, 0, 1))
    result = plan(table, "me", {1: 1, 3: 0})
    assert result == OwnershipPlan(acquire=((0, 3), (2, 5)), release=(1, 3))


def test_plan_reacquires_when_the_table_epoch_is_newer():
    """A partition held at an older epoch than the table's is acquired again at the table's epoch."""
    table = PartitionTable(4, ("me", "me", "me"), (3, 5, 2))
    result = plan(table, "me", {0: 3, 1: 4, 2: 7})
    assert result.acquire == ((1, 5),)
    assert result.release == ()


def test_plan_is_empty_when_in_sync():
    """A member holding exactly its partitions at the table's epochs has nothing to do."""
    table = PartitionTable(4, ("me", "other", "me"), (3, 2, 5))
    assert plan(table, "me", {0: 3, 2: 5}) == OwnershipPlan((), ())


def test_membership_live_and_dead_by_observer_clock():
    """A member is live while now - last heartbeat <= timeout, and dead after, on the observer's clock."""
    ms = Membership(timeout_s=2.0)
    assert ms.observe("b", {"host": "h2"}, now_s=100.0) is True
    assert ms.observe("a", {"host": "h1"}, now_s=101.0) is True
    assert ms.live(102.0) == ["a", "b"]
    assert ms.dead(102.0) == []
    assert ms.live(102.5) == ["a"]
    assert ms.dead(102.5) == ["b"]
    assert ms.live(103.5) == []
    assert ms.dead(103.5) == ["a", "b"]


def test_membership_heartbeat_revives_and_is_not_new():
    """A later heartbeat refreshes liveness and updates info, and is not reported as a new member."""
    ms = Membership(timeout_s=2.0)
    ms.observe("a", {"v": 1}, now_s=0.0)
    assert ms.dead(5.0) == ["a"]
    assert ms.observe("a", {"v": 2}, now_s=5.0) is False
    assert ms.live(5.0) == ["a"]
    assert ms.info["a"] == {"v": 2}


def test_membership_remove_forgets_a_member():
    """remove() forgets the member (True once, then False) and it is neither live nor dead."""
    ms = Membership(timeout_s=1.0)
    ms.observe("a", {}, now_s=0.0)
    assert ms.remove("a") is True
    assert ms.remove("a") is False
    assert ms.live(0.0) == [] and ms.dead(10.0) == []


def test_only_members_silent_long_enough_are_worth_a_probe():
    """silent() picks the known members not heard of for the given time (the ones a PU probes), skips members
    heard of since and members it does not know; with the default limits a member is probed from a heartbeat
    interval before its lease ends, so a probe that finds it gone still makes it dead when the lease ends."""
    ms = Membership(timeout_s=1.5, lease_s=0.6)
    ms.observe("a", {}, now_s=10.0)
    ms.observe("b", {}, now_s=10.3)
    assert ms.silent(["a", "b", "ghost"], now_s=10.5, silent_s=0.4) == ["a"]
    ms.observe("a", {}, now_s=10.6)
    assert ms.silent(["a", "b"], now_s=10.75, silent_s=0.4) == ["b"]
    limits = Limits()
    assert limits.heartbeat_interval_s < limits.probe_silent_s < limits.lease_s


def test_coordinator_is_the_smallest_live_id():
    """The coordinator is the minimum live id, and None with nobody live."""
    assert coordinator(["pu-b", "pu-a", "pu-c"]) == "pu-a"
    assert coordinator([]) is None
    ms = Membership(timeout_s=2.0)
    ms.observe("pu-a", {}, now_s=0.0)
    ms.observe("pu-b", {}, now_s=3.0)
    assert coordinator(ms.live(1.0)) == "pu-a"
    assert coordinator(ms.live(4.0)) == "pu-b"
