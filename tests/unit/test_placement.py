"""Backups, promotion and live migration in the coordinator's table computation (pure)."""

from __future__ import annotations

from spacegrid.core.ownership import next_table
from spacegrid.partitioning import PartitionTable


def two_member_table(backup_count: int = 1) -> PartitionTable:
    table = next_table(PartitionTable.empty(8), ["a", "b"], backup_count=backup_count)
    assert table is not None
    return table


def test_every_partition_gets_backups_on_other_members():
    """With backup_count 1 each partition has one backup, never its owner, spread evenly."""
    table = two_member_table()
    for p in range(8):
        assert len(table.backups_of(p)) == 1 and table.backups_of(p)[0] != table.owner(p)
    assert len(table.backed_up_by("a")) == len(table.backed_up_by("b")) == 4


def test_backups_prefer_another_host():
    """Where hosts differ, a backup sits on another host than its owner."""
    hosts = {"a": "h1", "b": "h1", "c": "h2", "d": "h2"}
    table = next_table(PartitionTable.empty(8), ["a", "b", "c", "d"], backup_count=1, hosts=hosts)
    assert table is not None
    for p in range(8):
        assert hosts[table.backups_of(p)[0]] != hosts[table.owner(p) or ""]


def test_a_dead_owner_is_replaced_by_its_backup_with_a_new_epoch():
    """When an owner dies, each of its partitions is promoted to its backup, and only those epochs change."""
    table = two_member_table()
    promoted = next_table(table, ["b", "c"], backup_count=1, ready={})
    assert promoted is not None
    for p in table.owned_by("a"):
        assert promoted.owner(p) == table.backups_of(p)[0] == "b"
        assert promoted.epochs[p] == table.epochs[p] + 1
    for p in table.owned_by("b"):
        assert promoted.owner(p) == "b" and promoted.epochs[p] == table.epochs[p]
    assert "a" not in {m for p in range(8) for m in promoted.backups_of(p)}


def test_a_live_move_waits_until_the_new_owner_is_a_ready_backup():
    """A joining member first becomes a backup of what it will own; ownership flips once it reports caught up."""
    table = two_member_table(backup_count=0)
    step1 = next_table(table, ["a", "b", "c"], backup_count=0, ready={})
    assert step1 is not None
    assert step1.owners == table.owners and step1.epochs == table.epochs
    pinned = step1.backed_up_by("c")
    assert len(pinned) == 2
    step2 = next_table(step1, ["a", "b", "c"], backup_count=0, ready={"c": frozenset(pinned)})
    assert step2 is not None
    assert sorted(step2.owned_by("c")) == sorted(pinned)
    assert all(step2.epochs[p] == step1.epochs[p] + 1 for p in pinned)
    assert next_table(step2, ["a", "b", "c"], backup_count=0, ready={"c": frozenset(pinned)}) is None


def test_a_leaving_member_hands_everything_off_before_it_owns_nothing():
    """A leaving member keeps its partitions until their new owners are ready, then owns and backs up nothing."""
    table = two_member_table()
    step1 = next_table(table, ["a", "b"], backup_count=1, leaving=frozenset({"a"}), ready={})
    assert step1 is not None
    assert step1.owned_by("a") == table.owned_by("a")
    assert step1.backed_up_by("a") == []
    ready = {"b": frozenset(step1.backed_up_by("b"))}
    step2 = next_table(step1, ["a", "b"], backup_count=1, leaving=frozenset({"a"}), ready=ready)
    assert step2 is not None
    assert step2.owned_by("a") == [] and len(step2.owned_by("b")) == 8


def test_backups_rebalance_when_members_join():
    """Backups piled on one member spread out once others join: nobody holds more than its share."""
    table = next_table(PartitionTable.empty(64), ["a", "b"], backup_count=1)
    assert table is not None
    settled = table
    for _ in range(5):
        nxt = next_table(settled, ["a", "b", "c", "d"], backup_count=1,
                         ready={m: frozenset(settled.backed_up_by(m)) for m in "abcd"})
        if nxt is None:
            break
        settled = nxt
    loads = sorted(len(settled.backed_up_by(m)) for m in "abcd")
    assert loads[-1] - loads[0] <= 2 and sum(loads) == 64


def test_a_new_grids_backups_follow_the_ring_of_members():
    """A new grid of 4 members places the backups of each member's partitions on the next member of the sorted
    ring, so each PU backs up one owner's partitions (its backup follower reads one owner's log subject), with
    every member holding an equal share."""
    members = ["a", "b", "c", "d"]
    table = next_table(PartitionTable.empty(64), members, backup_count=1)
    assert table is not None
    for member in members:
        owners = {table.owner(p) for p in table.backed_up_by(member)}
        assert owners == {members[(members.index(member) - 1) % 4]}
        assert len(table.backed_up_by(member)) == 16


def test_two_backups_follow_the_next_two_members():
    """With backup_count 2 the two backups of a member's partitions are the next two members of the ring."""
    members = ["a", "b", "c", "d"]
    table = next_table(PartitionTable.empty(16), members, backup_count=2)
    assert table is not None
    for p in range(16):
        owner = members.index(table.owner(p) or "")
        assert set(table.backups_of(p)) == {members[(owner + 1) % 4], members[(owner + 2) % 4]}


def test_a_pu_that_joined_holds_its_share_of_backups_after_the_moves() -> None:
    """Regression: 2 PUs, then a third joins and takes its fair share by live migration; once the moves are done
    every PU holds at least the floor of its share of backups (before, the new PU held none and one old PU held the
    new PU's partitions' backups on top of its own share: 42, 22, 0 of 64)."""
    from collections import Counter

    from spacegrid.core.ownership import next_table
    from spacegrid.partitioning import PartitionTable

    table = PartitionTable.empty(64)
    for members in (["a", "b"], ["a", "b", "c"]):
        for _ in range(10):
            ready = {m: frozenset(p for p, group in enumerate(table.backups) if m in group) for m in members}
            proposal = next_table(table, members, backup_count=1, ready=ready)
            if proposal is None:
                break
            table = proposal
    held = Counter(member for group in table.backups for member in group)
    assert Counter(table.owners) == Counter({"a": 22, "b": 21, "c": 21})
    assert min(held[m] for m in "abc") >= 64 // 3 and sum(held.values()) == 64, held
    assert all(owner not in group for owner, group in zip(table.owners, table.backups))
