"""Unit tests of the key-to-partition hash, key affinity and the versioned partition table."""

from collections import Counter

import pytest

from spacegrid import codec
from spacegrid.examples import tickets
from spacegrid.partitioning import PartitionTable, partition_of
from spacegrid.space import Space


@pytest.mark.parametrize(
    ("routing_key", "count", "expected"),
    [
        ("hello world", 2**32, 0x0D4A1185),  # the plain crc32 of b"hello world"
        ("a", 64, 3),
        ("b", 64, 57),
        ("E1", 64, 5),
        ("E17", 64, 4),
        ("tickets", 64, 52),
        ("user:42", 7, 4),
        ("é", 64, 62),  # hashed as UTF-8, not Latin-1
        ("", 64, 0),
    ],
)
def test_partition_of_is_pinned_to_crc32(routing_key, count, expected):
    """partition_of is crc32(UTF-8 key) % count, so a change of hash function is caught."""
    assert partition_of(routing_key, count) == expected


def test_partition_of_is_in_range_for_every_count():
    """Every result lies in 0..count-1, including a single partition."""
    for count in (1, 2, 3, 64, 4096):
        for i in range(500):
            assert 0 <= partition_of(f"k{i}", count) < count
    assert partition_of("anything", 1) == 0


def test_partition_of_spreads_keys_evenly():
    """10k keys over 64 partitions land in every partition, each within 50%..150% of the mean."""
    counts = Counter(partition_of(f"key-{i}", 64) for i in range(10_000))
    mean = 10_000 / 64
    assert len(counts) == 64
    assert all(0.5 * mean <= n <= 1.5 * mean for n in counts.values()), counts


def test_tickets_seat_routes_with_its_event():
    """A seat key `E1:S1@E1` of map seats lives in the same partition as event `E1` of map events."""
    space = tickets.space
    assert space.partition_of("seats", "E1:S1@E1") == space.partition_of("events", "E1")
    for event in ("E1", "E2", "E17", "concert-2025"):
        partition = space.partition_of("events", event)
        for seat in ("S0", "S1", "A12", "Z99"):
            assert space.partition_of("seats", tickets.seat_key(event, seat)) == partition


def test_routing_key_is_the_part_after_the_last_at():
    """The routing key is the text after the last '@', or the whole key when there is none."""
    space = Space("routing", partitions=64)
    space.map("m")
    assert space.routing_key("m", "plain") == "plain"
    assert space.routing_key("m", "x@r") == "r"
    assert space.routing_key("m", "a@b@c") == "c"
    assert space.partition_of("m", "x@r") == partition_of("r", 64)


def test_map_affinity_function_overrides_at():
    """A map's affinity function decides the routing key, and '@' has no special meaning then."""
    space = Space("aff", partitions=64)
    space.map("orders", affinity=lambda key: key.split(":")[0])
    assert space.routing_key("orders", "cust7:order1@elsewhere") == "cust7"
    assert space.partition_of("orders", "cust7:order1@elsewhere") == partition_of("cust7", 64)
    assert space.partition_of("orders", "cust7:o2") == space.partition_of("orders", "cust7:o3@x")


def test_empty_table_has_no_owners():
    """An empty table is version 0 with no owner and epoch 0 everywhere."""
    table = PartitionTable.empty(4)
    assert table.version == 0
    assert table.partition_count == 4
    assert table.owners == (None,) * 4
    assert table.epochs == (0,) * 4


def test_successor_bumps_epochs_only_where_owners_change():
    """successor increments the version by one and the epoch of exactly the partitions that change owner."""
    table = PartitionTable(3, ("a", "a", "b", "b", None), (1, 4, 1, 2, 0))
    nxt = table.successor(("a", "c", "b", None, "a"))
    assert nxt.version == 4
    assert nxt.owners == ("a", "c", "b", None, "a")
    assert nxt.epochs == (1, 5, 1, 3, 1)
    assert table.version == 3 and table.epochs == (1, 4, 1, 2, 0)  # the old table is untouched


def test_successor_with_same_owners_keeps_epochs():
    """A successor with unchanged owners bumps only the version."""
    table = PartitionTable(7, ("a", "b"), (2, 3))
    nxt = table.successor(("a", "b"))
    assert (nxt.version, nxt.owners, nxt.epochs) == (8, ("a", "b"), (2, 3))


def test_owner_and_owned_by():
    """owner() answers per partition and owned_by() lists a member's partitions in order."""
    table = PartitionTable(1, ("a", "b", "a", None), (1, 1, 1, 0))
    assert table.owner(1) == "b"
    assert table.owner(3) is None
    assert table.owned_by("a") == [0, 2]
    assert table.owned_by("zzz") == []


def test_table_wire_round_trip():
    """to_wire/from_wire, also through msgpack, give back an equal table."""
    table = PartitionTable(12, ("pu-1", None, "pu-2", "pu-1"), (3, 0, 7, 1))
    assert PartitionTable.from_wire(table.to_wire()) == table
    assert PartitionTable.from_wire(codec.decode(codec.encode(table.to_wire()), 1 << 20)) == table
