"""Unit tests of eviction and expiry in the partition state: bounds, policies, TTL, max-idle, read-through misses."""

from typing import Any

import pytest

from spacegrid import codec
from spacegrid.core.eviction import Eviction
from spacegrid.core.partition import PartitionState
from spacegrid.errors import DefinitionError, NotLoaded
from spacegrid.limits import Limits
from spacegrid.space import Space

LIMITS = Limits()
SCAN = 1000


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def make(eviction: Eviction, track: bool = True) -> tuple[PartitionState, Clock]:
    space = Space("ev", partitions=1)
    space.map("m", eviction=eviction)
    clock = Clock()
    return PartitionState(space, 0, LIMITS, track_dirty=track, clock=clock), clock


def write(state: PartitionState, key: str, value: Any) -> None:
    state.put(f"op-{key}-{state.lsn_assigned}", "m", key, value, None)
    while state.take_append() is not None:
        state.on_append_committed()


def test_lru_evicts_the_least_recently_used_persisted_entries_only() -> None:
    """An LRU-bounded map evicts only persisted entries, the least recently used first (a read counts as a use),
    down to max_entries, and counts each eviction."""
    state, clock = make(Eviction(max_entries=3))
    for key in "abcd":
        clock.now_s += 1
        write(state, key, key)
    assert state.evict(SCAN) == 0, "nothing is persisted yet: nothing may go"
    state.on_persisted(state.lsn_committed)
    clock.now_s += 1
    state.get_encoded("m", "a")  # a is now the most recently used
    assert state.evict(SCAN) == 1
    assert sorted(state.maps["m"]) == ["a", "c", "d"]
    assert state.cache["m"][2] == 1


def test_a_miss_after_eviction_asks_for_a_read_through_and_loading_fills_it() -> None:
    """A get or compare-and-set of an evicted key raises NotLoaded (a read-through request); loading the key from
    the store fills it, a key the store lacks is remembered as absent, and both misses are counted."""
    state, _ = make(Eviction(max_entries=1))
    write(state, "a", 1)
    write(state, "b", 2)
    state.on_persisted(state.lsn_committed)
    state.evict(SCAN)
    assert list(state.maps["m"]) == ["b"]
    with pytest.raises(NotLoaded) as missing:
        state.get_encoded("m", "a")
    assert (missing.value.map_name, missing.value.key) == ("m", "a")
    outcome = state.put("op-x", "m", "a", 5, 1)  # a compare-and-set needs the evicted version too
    assert isinstance(outcome.error, NotLoaded)
    state.load_key("m", "a", (codec.encode(1), 1))
    assert state.get("m", "a") == (1, 1)
    state.load_key("m", "zz", None)  # the store has none: remembered, no second read
    assert state.get_encoded("m", "zz") is None
    hits, misses, _, _ = state.cache["m"]
    assert (hits, misses) == (0, 2)


def test_a_stale_read_through_never_overwrites_a_newer_write() -> None:
    """A read-through that brings an older version than the one in memory is ignored: it never overwrites a newer
    write."""
    state, _ = make(Eviction(max_entries=1))
    write(state, "a", "new")
    state.load_key("m", "a", (codec.encode("old"), 1))
    assert state.get("m", "a") == ("new", 1)


def test_lfu_keeps_the_frequently_used() -> None:
    """An LFU-bounded map keeps the frequently read entry and evicts a rarely used one."""
    state, clock = make(Eviction(max_entries=2, policy="lfu"))
    for key in "ab":
        write(state, key, key)
    for _ in range(5):
        state.get_encoded("m", "a")
    write(state, "c", "c")
    state.on_persisted(state.lsn_committed)
    state.evict(SCAN)
    assert sorted(state.maps["m"]) == ["a", "c"]


def test_max_bytes_bounds_memory() -> None:
    """A map bounded by max_bytes is evicted down to at most that many bytes of entries."""
    state, _ = make(Eviction(max_bytes=2000))
    for i in range(10):
        write(state, f"k{i}", "x" * 400)
    state.on_persisted(state.lsn_committed)
    state.evict(SCAN)
    tracker = state.eviction["m"]
    assert tracker.bytes <= 2000 and len(state.maps["m"]) < 10


def test_ttl_expires_after_the_last_write_and_max_idle_after_the_last_use() -> None:
    """ttl_s expires an entry that long after its last write, even if it was read since; max_idle_s evicts one
    that long after its last use."""
    state, clock = make(Eviction(ttl_s=10, max_idle_s=5))
    write(state, "a", 1)
    write(state, "b", 2)
    state.on_persisted(state.lsn_committed)
    clock.now_s += 4
    state.get_encoded("m", "a")
    clock.now_s += 2  # b idle 6 s, a idle 2 s
    assert state.evict(SCAN) == 1 and list(state.maps["m"]) == ["a"]
    assert state.expired(10) == []
    clock.now_s += 5  # a written 11 s ago
    assert state.expired(10) == [("m", "a", 1)]


def test_loading_stops_at_the_bound_and_marks_the_map_incomplete() -> None:
    """Loading from the store stops at the map's max_entries and marks the map incomplete: a key left out raises
    NotLoaded (read through) instead of reading as absent."""
    state, _ = make(Eviction(max_entries=2))
    state.begin_load(3)
    rows = [("m", key, codec.encode(i), i + 1) for i, key in enumerate("abc")]
    assert state.load_rows(rows) == 2
    with pytest.raises(NotLoaded):
        state.get_encoded("m", "c")


def test_eviction_by_size_needs_a_store() -> None:
    """A count or size bound on a map without persistence is refused at definition (evicted entries could not be
    read back); expiry alone is allowed; an unknown policy is refused."""
    with pytest.raises(DefinitionError, match="needs a store"):
        Space("ev2").map("m", persistence="none", eviction=Eviction(max_entries=5))
    Space("ev3").map("m", persistence="none", eviction=Eviction(ttl_s=5))  # expiry alone is fine
    with pytest.raises(DefinitionError, match="policy"):
        Eviction(policy="fifo")


def test_a_deleted_key_the_store_still_holds_does_not_come_back() -> None:
    """A key deleted in an incomplete map reads as absent: it is not read through from the store that still holds
    it, and a late read-through begun before the delete does not bring it back."""
    state, _ = make(Eviction(max_entries=1))
    write(state, "a", 1)
    write(state, "b", 2)
    state.on_persisted(state.lsn_committed)
    state.evict(SCAN)  # the map is now incomplete: misses read through
    state.delete("op-del", "m", "b", None)
    while state.take_append() is not None:
        state.on_append_committed()
    assert state.get_encoded("m", "b") is None  # no read-through: the delete is not persisted yet
    state.load_key("m", "b", (codec.encode(2), 2))  # a read-through begun before the delete answers late
    assert state.get_encoded("m", "b") is None
