"""Unit tests of the partition state's write-behind bookkeeping: unpersisted writes, loading from the store,
replay over a trimmed log, write-through outcomes."""

from typing import Any

import pytest

from spacegrid import codec
from spacegrid.core.partition import PartitionState
from spacegrid.errors import DefinitionError, LogGap
from spacegrid.limits import Limits
from spacegrid.space import Space

space = Space("wb", partitions=4)
space.map("behind")
space.map("through", persistence="write-through")
space.map("volatile", persistence="none")
P = space.partition_of("behind", "k@r")
LIMITS = Limits()


def new_state(track: bool = True) -> PartitionState:
    return PartitionState(space, P, LIMITS, track_dirty=track)


def commit_all(state: PartitionState) -> list[Any]:
    """Append and commit everything pending; returns the decoded log messages, as replay would see them."""
    messages = []
    while (batch := state.take_append()) is not None:
        messages.append(codec.decode(batch.payload, 1 << 20))
        state.on_append_committed()
    return messages


def test_committed_writes_of_persisted_maps_are_dirty_until_persisted() -> None:
    """Only committed writes of persisted maps are dirty (not overlay writes, not maps with persistence 'none');
    the dirty entries carry each key's latest value and version, and on_persisted clears them."""
    state = new_state()
    state.put("op1", "behind", "k@r", {"n": 1}, None)
    state.put("op2", "volatile", "k@r", {"n": 1}, None)
    assert state.dirty == {}, "overlay writes are not persisted: only committed ones"
    commit_all(state)
    assert state.dirty == {("behind", "k@r"): 1}
    state.put("op3", "behind", "k@r", {"n": 2}, None)
    state.delete("op4", "behind", "j@r", None)  # absent: no write
    commit_all(state)
    entries = state.dirty_entries()
    assert [(e.map, e.key, codec.decode(e.value, 1 << 20), e.version) for e in entries] == [("behind", "k@r", {"n": 2}, 3)]
    state.on_persisted(3)
    assert state.dirty == {}


def test_a_delete_is_dirty_with_no_value_and_writes_after_a_snapshot_stay_dirty() -> None:
    """A committed delete is dirty with no value, and a write committed after a snapshot was taken stays dirty
    when that snapshot is persisted."""
    state = new_state()
    state.put("op1", "behind", "a@r", 1, None)
    state.put("op2", "behind", "b@r", 2, None)
    commit_all(state)
    state.delete("op3", "behind", "a@r", None)
    commit_all(state)
    snapshot_lsn = state.lsn_committed
    assert {(e.key, e.value, e.version) for e in state.dirty_entries()} == {("a@r", None, 3), ("b@r", codec.encode(2), 2)}
    state.put("op4", "behind", "b@r", 5, None)  # written again while the snapshot is being persisted
    commit_all(state)
    state.on_persisted(snapshot_lsn)
    assert state.dirty == {("behind", "b@r"): 4}


def test_without_a_store_nothing_is_tracked() -> None:
    """A partition state without a store (track_dirty off) tracks no dirty entries."""
    state = new_state(track=False)
    state.put("op1", "behind", "k@r", 1, None)
    commit_all(state)
    assert state.dirty == {}


def test_load_then_replay_skips_what_the_store_holds_and_marks_the_tail_dirty() -> None:
    """After loading the store's copy at version 3, replaying the whole retained log skips what the store holds,
    applies the rest, and marks only that tail dirty."""
    writer = new_state()
    for i in range(1, 6):
        writer.put(f"op{i}", "behind", "k@r", i, None)
    log = commit_all(writer)  # one record per message here: versions 1..5
    reader = new_state()
    reader.begin_load(3)
    assert reader.load_rows([("behind", "k@r", codec.encode(3), 3)]) == 1
    for message in log:  # the whole retained log: the first records are skipped
        reader.replay(message)
    assert reader.get("behind", "k@r") == (5, 5)
    assert reader.lsn_committed == 5 and reader.dirty == {("behind", "k@r"): 5}


def test_replay_refuses_a_log_trimmed_past_the_state() -> None:
    """Replaying a log whose retained messages begin past the version loaded from the store raises LogGap: the
    records between were trimmed, and the partition must be loaded again."""
    writer = new_state()
    log = []
    for i in range(1, 6):
        writer.put(f"op{i}", "behind", f"k{i}@r", i, None)
        log += commit_all(writer)  # one message per write
    reader = new_state()
    reader.begin_load(1)  # the store copy is older than where the retained log starts
    with pytest.raises(LogGap, match="continues at version"):
        for message in log[2:]:
            reader.replay(message)


def test_write_through_outcomes_wait_for_the_store() -> None:
    """A write to a write-through map waits for the store before it is acknowledged (outcome.durable), also when a
    retry is answered from the dedup window; write-behind writes, and writes on a state without a store, do not
    wait."""
    state = new_state()
    assert state.put("op1", "through", "k@r", 1, None).durable
    assert not state.put("op2", "behind", "k@r", 1, None).durable
    commit_all(state)
    retried = state.put("op1", "through", "k@r", 1, None)  # a retry answered from the dedup window
    assert retried.durable and retried.value == 1
    assert not new_state(track=False).put("op1", "through", "k@r", 1, None).durable


def test_write_through_maps_cannot_be_async() -> None:
    """A write-through map with async replication, or an unknown persistence mode, is refused at definition."""
    other = Space("wb2")
    with pytest.raises(DefinitionError, match="write-through"):
        other.map("m", replication="async", persistence="write-through")
    with pytest.raises(DefinitionError, match="persistence"):
        other.map("n", persistence="sometimes")
