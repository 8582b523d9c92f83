"""Unit tests of the partition state machine: overlay, commit, versions, CAS, handlers, group commit, dedup, replay."""

from typing import Any

import pytest

from spacegrid import codec
from spacegrid.core.partition import PartitionState
from spacegrid.errors import (
    EncodeError,
    HandlerError,
    PayloadTooLarge,
    UnknownMap,
    VersionConflict,
    WrongPartition,
)
from spacegrid.examples import tickets
from spacegrid.limits import KIB, Limits
from spacegrid.space import Space

space = Space("unit", partitions=8)
space.map("m")
space.map("other")
P = space.partition_of("m", "x@r")
FOREIGN = next(f"f@{i}" for i in range(100) if space.partition_of("m", f"f@{i}") != P)


@space.handler("m")
def put_many(ctx, key: str, args: Any) -> int:
    for k in args["keys"]:
        ctx.put(k, args["value"], map=args.get("map"))
    return len(args["keys"])


@space.handler("m")
def put_then_raise(ctx, key: str, args: Any) -> None:
    ctx.put(key, {"n": 1})
    ctx.put("y@r", {"n": 2})
    raise ValueError("changed my mind")


@space.handler("m")
def put_then_touch_foreign(ctx, key: str, args: Any) -> None:
    ctx.put(key, {"n": 1})
    ctx.put(FOREIGN, {"n": 2})


@space.handler("m")
def read_foreign(ctx, key: str, args: Any) -> Any:
    return ctx.get(FOREIGN)


@space.handler("m")
def read(ctx, key: str, args: Any) -> Any:
    return ctx.get_entry(key)


@space.handler("m")
def put_unencodable(ctx, key: str, args: Any) -> None:
    ctx.put(key, {1, 2, 3})


@space.handler("m")
def return_unencodable(ctx, key: str, args: Any) -> Any:
    return object()


@space.handler("m")
def put_two_report_versions(ctx, key: str, args: Any) -> list[int]:
    ctx.put("a@r", {"n": 1})
    ctx.put("b@r", {"n": 2})
    return [ctx.get_entry("a@r")[1], ctx.get_entry("b@r")[1]]


@space.handler("m")
def mutate_in_place_then_raise(ctx, key: str, args: Any) -> None:
    value = ctx.get(key)
    value["n"] += 1
    raise ValueError("abort after mutating what get() returned")


@space.query()
def keys_of(view, args: Any) -> list[str]:
    return sorted(k for k, _ in view.items(args))


@space.query()
def explode(view, args: Any) -> None:
    raise ZeroDivisionError("boom")


def new_state(limits: Limits = Limits()) -> PartitionState:
    return PartitionState(space, P, limits)


def commit(state: PartitionState):
    """Append and acknowledge whatever is queued; returns the batch."""
    batch = state.take_append()
    assert batch is not None
    state.on_append_committed()
    return batch


def ok(outcome):
    assert outcome.error is None, outcome.error
    return outcome.value


# ---- overlay and commit ------------------------------------------------------------------------------------


def test_put_is_invisible_until_committed():
    """A put shows nothing to get() until take_append and on_append_committed, then shows value and version."""
    state = new_state()
    outcome = state.put("op1", "m", "x@r", {"v": 1}, None)
    assert ok(outcome) == 1
    assert state.get("m", "x@r") is None
    batch = state.take_append()
    assert batch is not None and batch.record_count == 1 and batch.lsn_last == 1
    assert state.get("m", "x@r") is None
    assert state.on_append_committed() == 1
    assert state.get("m", "x@r") == ({"v": 1}, 1)
    assert state.entry_count == 1


def test_wait_lsn_exceeds_committed_until_commit():
    """A write's Outcome.wait_lsn is above lsn_committed until its append is acknowledged."""
    state = new_state()
    outcome = state.put("op1", "m", "x@r", "a", None)
    assert outcome.wait_lsn > state.lsn_committed
    state.take_append()
    assert outcome.wait_lsn > state.lsn_committed
    state.on_append_committed()
    assert outcome.wait_lsn <= state.lsn_committed


def test_read_of_overlay_waits_for_the_write_it_observed():
    """A handler that only reads an uncommitted write answers with a wait_lsn covering that write."""
    state = new_state()
    write = state.put("w", "m", "x@r", "a", None)
    seen = state.execute("r", "read", "x@r", None)
    assert ok(seen) == ("a", 1)
    assert seen.wait_lsn >= write.wait_lsn > state.lsn_committed
    assert state.take_append().record_count == 1  # the read staged nothing


def test_get_is_none_for_unknown_key_and_map():
    """get() answers None for a key or a map that holds nothing."""
    state = new_state()
    assert state.get("m", "nothing@r") is None
    assert state.get("never-written", "x@r") is None


# ---- versions and CAS -------------------------------------------------------------------------------------


def test_versions_only_grow_across_delete_and_recreate():
    """A key deleted and written again gets a higher version than any before."""
    state = new_state()
    ok(state.put("1", "m", "x@r", "a", None))
    commit(state)
    _, v1 = state.get("m", "x@r")
    ok(state.put("2", "m", "y@r", "other", None))
    assert ok(state.delete("3", "m", "x@r", None)) is True
    commit(state)
    assert state.get("m", "x@r") is None
    ok(state.put("4", "m", "x@r", "b", None))
    commit(state)
    value, v2 = state.get("m", "x@r")
    assert value == "b"
    assert v2 > v1
    assert v2 > state.get("m", "y@r")[1]


def test_delete_of_missing_key_returns_false_and_writes_nothing():
    """Deleting a key that doesn't exist answers False and queues no log record."""
    state = new_state()
    assert ok(state.delete("d", "m", "x@r", None)) is False
    assert state.take_append() is None


def test_cas_expected_version_zero_means_must_not_exist():
    """expected_version=0 creates a missing key and fails with VersionConflict on an existing one."""
    state = new_state()
    version = ok(state.put("1", "m", "x@r", "a", 0))
    conflict = state.put("2", "m", "x@r", "b", 0)  # the first write is not committed yet: CAS sees the overlay
    assert isinstance(conflict.error, VersionConflict)
    assert conflict.error.current_version == version
    commit(state)
    assert state.get("m", "x@r") == ("a", version)


def test_cas_put_succeeds_on_matching_version_and_fails_otherwise():
    """A put with the current version succeeds; with a stale one it fails carrying the current version."""
    state = new_state()
    v1 = ok(state.put("1", "m", "x@r", "a", None))
    commit(state)
    v2 = ok(state.put("2", "m", "x@r", "b", v1))
    assert v2 > v1
    commit(state)
    stale = state.put("3", "m", "x@r", "c", v1)
    assert isinstance(stale.error, VersionConflict)
    assert stale.error.current_version == v2
    assert state.take_append() is None
    assert state.get("m", "x@r") == ("b", v2)


def test_cas_put_on_missing_key_with_nonzero_version_conflicts_with_zero():
    """A put expecting a version on a missing key fails with current_version 0."""
    state = new_state()
    outcome = state.put("1", "m", "x@r", "a", 5)
    assert isinstance(outcome.error, VersionConflict)
    assert outcome.error.current_version == 0


def test_cas_delete():
    """A delete with a stale expected version fails; with the current one it deletes."""
    state = new_state()
    v1 = ok(state.put("1", "m", "x@r", "a", None))
    commit(state)
    stale = state.delete("2", "m", "x@r", v1 + 10)
    assert isinstance(stale.error, VersionConflict) and stale.error.current_version == v1
    assert ok(state.delete("3", "m", "x@r", v1)) is True
    commit(state)
    assert state.get("m", "x@r") is None


# ---- handlers ---------------------------------------------------------------------------------------------


def test_handler_writes_several_keys_atomically():
    """A handler's writes to several keys of one partition commit together, in one operation, with distinct versions."""
    state = new_state()
    keys = ["a@r", "b@r", "c@r"]
    assert ok(state.execute("h", "put_many", "a@r", {"keys": keys, "value": 1})) == 3
    batch = commit(state)
    assert batch.record_count == 3 and len(batch.ops) == 1
    versions = [state.get("m", k)[1] for k in keys]
    assert sorted(versions) == versions and len(set(versions)) == 3


def test_handler_can_write_to_other_maps_of_the_same_partition():
    """A handler may write to another map when the key routes to its partition."""
    state = new_state()
    ok(state.execute("h", "put_many", "a@r", {"keys": ["z@r"], "value": 9, "map": "other"}))
    commit(state)
    assert state.get("other", "z@r")[0] == 9
    assert state.get("m", "z@r") is None


def test_handler_that_raises_leaves_no_staged_write():
    """A handler raising discards its writes: HandlerError, nothing queued, nothing visible."""
    state = new_state()
    outcome = state.execute("h", "put_then_raise", "x@r", None)
    assert isinstance(outcome.error, HandlerError)
    assert state.take_append() is None
    assert state.lsn_assigned == 0
    ok(state.put("p", "m", "y@r", "v", 0))  # not blocked by a phantom staged write
    commit(state)
    assert state.get("m", "x@r") is None


def test_handler_touching_another_partition_writes_nothing():
    """Writing or reading a key of another partition fails with WrongPartition and stages nothing."""
    state = new_state()
    outcome = state.execute("h", "put_then_touch_foreign", "x@r", None)
    assert isinstance(outcome.error, WrongPartition)
    assert str(P) in str(outcome.error)
    assert isinstance(state.execute("h2", "read_foreign", "x@r", None).error, WrongPartition)
    assert state.take_append() is None


def test_operation_on_a_key_of_another_partition_is_refused():
    """A put or handler call whose own key belongs to another partition fails with WrongPartition."""
    state = new_state()
    assert isinstance(state.put("1", "m", FOREIGN, "v", None).error, WrongPartition)
    assert isinstance(state.execute("2", "read", FOREIGN, None).error, WrongPartition)
    assert state.take_append() is None


def test_put_to_unknown_map_fails():
    """A put to an undeclared map answers UnknownMap."""
    state = new_state()
    assert isinstance(state.put("1", "nope", "x@r", "v", None).error, UnknownMap)


def test_tickets_create_and_reserve():
    """The tickets handlers create an event with its seats and reserve all-or-nothing within one partition."""
    space_t = tickets.space
    state = PartitionState(space_t, space_t.partition_of("events", "E1"), Limits())
    assert ok(state.execute("c", "create_event", "E1", {"seats": 3, "name": "Show"})) == {"created": True, "seats": 3}
    commit(state)
    assert ok(state.execute("r1", "reserve", "E1", {"seats": ["S0", "S1"], "holder": "ann"}))["ok"] is True
    refused = ok(state.execute("r2", "reserve", "E1", {"seats": ["S1", "S2"], "holder": "bob"}))
    assert refused["ok"] is False
    commit(state)
    assert state.get("events", "E1")[0]["sold"] == 2
    assert state.get("seats", "E1:S2@E1")[0] == {"holder": None}
    assert state.query("sales", None) == {"events": 1, "sold": 2, "held_seats": 2}


# ---- group commit and batch limits ---------------------------------------------------------------------------


def test_group_commit_batches_writes_made_during_an_append():
    """While an append is in flight take_append returns None; writes made meanwhile form the next batch."""
    state = new_state()
    ok(state.put("1", "m", "a@r", 1, None))
    first = state.take_append()
    assert [op.op_id for op in first.ops] == ["1"]
    ok(state.put("2", "m", "b@r", 2, None))
    ok(state.put("3", "m", "a@r", 3, None))
    assert state.take_append() is None
    state.on_append_committed()
    assert state.get("m", "a@r") == (1, 1)
    second = state.take_append()
    assert [op.op_id for op in second.ops] == ["2", "3"]
    assert second.record_count == 2 and second.lsn_last == 3
    assert state.get("m", "b@r") is None
    state.on_append_committed()
    assert state.get("m", "a@r") == (3, 3)
    assert state.get("m", "b@r") == (2, 2)
    assert state.take_append() is None


def test_a_retracted_append_is_taken_again_unchanged():
    """retract_append puts the in-flight batch back first in line with the same versions: the next take_append
    gives the same payload and lsn_last, the overlay still shows the pending write meanwhile (and a retry of it
    is still pending at the same lsn), and once that append is acknowledged the write is committed."""
    state = new_state()
    first = state.put("op1", "m", "x@r", {"v": 1}, None)
    batch = state.take_append()
    state.retract_append()
    assert state.inflight is None
    assert state.execute("r", "read", "x@r", None).value == ({"v": 1}, 1), "the overlay still holds the write"
    assert state.get("m", "x@r") is None and state.lsn_committed == 0
    assert state.put("op1", "m", "x@r", "retry", None).wait_lsn == first.wait_lsn, "still pending, same lsn"
    again = state.take_append()
    assert again is not None
    assert (again.payload, again.lsn_last, again.record_count) == (batch.payload, batch.lsn_last, batch.record_count)
    assert state.take_append() is None, "in flight again"
    assert state.on_append_committed() == 1
    assert state.get("m", "x@r") == ({"v": 1}, 1)
    assert ("m", "x@r") not in state.overlay and "op1" in state.dedup and state.take_append() is None


def test_a_retracted_append_stays_ahead_of_writes_made_meanwhile():
    """Writes made while the retracted append was in flight come after its operations, with the versions they
    were given: the log order and versions are the ones the writers were answered with."""
    state = new_state()
    ok(state.put("op1", "m", "x@r", 1, None))
    state.take_append()
    ok(state.put("op2", "m", "y@r", 2, None))
    state.retract_append()
    again = state.take_append()
    assert [op.op_id for op in again.ops] == ["op1", "op2"] and again.lsn_last == 2
    state.on_append_committed()
    assert state.get("m", "x@r") == (1, 1) and state.get("m", "y@r") == (2, 2)


def test_take_append_is_none_when_nothing_waits():
    """take_append returns None on a fresh partition."""
    assert new_state().take_append() is None


def test_record_limit_splits_backlog_without_splitting_an_operation():
    """append_records_max splits a backlog over several appends; one operation's records stay in one append."""
    state = new_state(Limits(append_records_max=5))
    for i in range(5):
        keys = [f"k{i}-{j}@r" for j in range(2)]
        ok(state.execute(f"op{i}", "put_many", keys[0], {"keys": keys, "value": i}))
    big = [f"big-{j}@r" for j in range(7)]
    ok(state.execute("big", "put_many", big[0], {"keys": big, "value": "x"}))
    sizes = []
    while (batch := state.take_append()) is not None:
        sizes.append([len(op.writes) for op in batch.ops])
        assert batch.record_count == sum(sizes[-1])
        state.on_append_committed()
    assert sizes == [[2, 2], [2, 2], [2], [7]]
    assert state.entry_count == 17


def test_byte_limit_splits_backlog():
    """append_bytes_max splits a backlog so no append payload exceeds it."""
    limits = Limits(write_bytes_max=2 * KIB, append_bytes_max=4 * KIB, request_payload_bytes_max=8 * KIB)
    state = new_state(limits)
    for i in range(10):
        ok(state.put(f"op{i}", "m", f"k{i}@r", "x" * 1000, None))
    batches = []
    while (batch := state.take_append()) is not None:
        assert len(batch.payload) <= limits.append_bytes_max
        batches.append(len(batch.ops))
        state.on_append_committed()
    assert sum(batches) == 10 and len(batches) > 1
    assert state.lsn_committed == 10


# ---- exactly-once -------------------------------------------------------------------------------------------


def test_retry_while_pending_returns_same_result_without_a_second_record():
    """The same op_id while pending answers the first result and wait_lsn and queues nothing more."""
    state = new_state()
    first = state.put("op", "m", "x@r", "a", None)
    again = state.put("op", "m", "x@r", "DIFFERENT", None)
    assert (again.value, again.wait_lsn, again.error) == (first.value, first.wait_lsn, None)
    batch = state.take_append()
    assert batch.record_count == 1
    during = state.put("op", "m", "x@r", "b", None)  # in flight
    assert during.value == first.value and during.wait_lsn == first.wait_lsn
    state.on_append_committed()
    assert state.get("m", "x@r") == ("a", 1)


def test_retry_after_commit_returns_remembered_result():
    """The same op_id after commit answers the remembered result and applies nothing."""
    state = new_state()
    first = ok(state.execute("op", "put_many", "a@r", {"keys": ["a@r", "b@r"], "value": 1}))
    commit(state)
    again = state.execute("op", "put_many", "a@r", {"keys": ["c@r"], "value": 2})
    assert ok(again) == first
    assert again.wait_lsn <= state.lsn_committed
    assert state.take_append() is None
    assert state.get("m", "c@r") is None


def test_dedup_window_evicts_the_oldest():
    """Beyond dedup_window_ops committed operations, the oldest op_id is forgotten and would apply again."""
    state = new_state(Limits(dedup_window_ops=2))
    for i in range(3):
        ok(state.put(f"op{i}", "m", f"k{i}@r", i, None))
        commit(state)
    assert list(state.dedup) == ["op1", "op2"]
    assert state.put("op2", "m", "k2@r", "again", None).value == 3
    assert state.take_append() is None
    reapplied = state.put("op0", "m", "k0@r", "again", None)
    assert ok(reapplied) == 4
    commit(state)
    assert state.get("m", "k0@r") == ("again", 4)


# ---- replay -------------------------------------------------------------------------------------------------


def test_replay_rebuilds_the_same_state():
    """Replaying the appended payloads rebuilds entries, versions, lsn, the owner epoch and dedup results."""
    live = new_state()
    live.set_owner_epoch(3)
    ok(live.put("p1", "m", "a@r", {"v": [1, 2]}, None))
    ok(live.execute("h1", "put_many", "b@r", {"keys": ["b@r", "c@r"], "value": "bc"}))
    payloads = [commit(live).payload]
    ok(live.delete("d1", "m", "b@r", None))
    ok(live.put("p2", "other", "a@r", b"\x00bytes", None))
    payloads.append(commit(live).payload)
    ok(live.put("p3", "m", "a@r", {"v": "new"}, 1))
    payloads.append(commit(live).payload)

    fresh = new_state()
    for payload in payloads:
        fresh.replay(codec.decode(payload, 1 << 20))

    for map_name in ("m", "other"):
        expected = {k: live.get(map_name, k) for k in live.maps.get(map_name, {})}
        assert {k: fresh.get(map_name, k) for k in expected} == expected
        assert fresh.query("keys_of", map_name) == live.query("keys_of", map_name)
    assert fresh.get("m", "b@r") is None
    assert fresh.lsn_committed == live.lsn_committed == fresh.lsn_assigned
    assert fresh.log_epoch == 3
    assert dict(fresh.dedup) == dict(live.dedup)
    retried = fresh.put("p3", "m", "a@r", "ignored", 1)
    assert retried.value == live.dedup["p3"]
    assert fresh.take_append() is None
    assert ok(fresh.put("p4", "m", "a@r", "next", None)) == live.lsn_committed + 1


def test_replay_refuses_an_epoch_going_backwards():
    """replay asserts when a log record carries an older epoch than one already replayed."""
    old, new = new_state(), new_state()
    old.set_owner_epoch(1)
    new.set_owner_epoch(2)
    ok(old.put("p1", "m", "a@r", 1, None))
    ok(new.put("q1", "m", "b@r", 2, None))
    old_payload, new_payload = commit(old).payload, commit(new).payload
    fresh = new_state()
    fresh.replay(codec.decode(new_payload, 1 << 20))
    with pytest.raises(AssertionError, match="log epochs only grow"):
        fresh.replay(codec.decode(old_payload, 1 << 20))


def test_set_owner_epoch_refuses_to_go_backwards():
    """set_owner_epoch asserts on an older epoch than the log's."""
    state = new_state()
    state.set_owner_epoch(4)
    with pytest.raises(AssertionError):
        state.set_owner_epoch(3)


# ---- queries ------------------------------------------------------------------------------------------------


def test_query_sees_committed_entries_only():
    """A query runs over committed entries, not over the uncommitted overlay."""
    state = new_state()
    ok(state.put("1", "m", "a@r", 1, None))
    commit(state)
    ok(state.put("2", "m", "b@r", 2, None))
    assert state.query("keys_of", "m") == ["a@r"]
    commit(state)
    assert state.query("keys_of", "m") == ["a@r", "b@r"]


def test_query_errors():
    """A query raising a plain exception surfaces as HandlerError; a spacegrid error passes through as is."""
    state = new_state()
    with pytest.raises(HandlerError, match="boom"):
        state.query("explode", None)
    with pytest.raises(UnknownMap):
        state.query("keys_of", "no-such-map")


# ---- encoding and size bounds -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [{1, 2}, object(), {"nested": frozenset()}])
def test_unencodable_value_gives_encode_error_and_no_write(value):
    """A put of a value msgpack can't encode answers EncodeError and stages nothing."""
    state = new_state()
    outcome = state.put("1", "m", "x@r", value, None)
    assert isinstance(outcome.error, EncodeError)
    assert state.take_append() is None
    assert state.lsn_assigned == 0


def test_handler_with_unencodable_write_or_result_gives_encode_error():
    """A handler writing or returning something unencodable answers EncodeError and stages nothing."""
    state = new_state()
    assert isinstance(state.execute("1", "put_unencodable", "x@r", None).error, EncodeError)
    assert isinstance(state.execute("2", "return_unencodable", "x@r", None).error, EncodeError)
    assert state.take_append() is None


def test_write_above_write_bytes_max_is_too_large():
    """A put whose encoded write exceeds write_bytes_max answers PayloadTooLarge and stages nothing."""
    limits = Limits()
    state = new_state(limits)
    outcome = state.put("1", "m", "x@r", "x" * limits.write_bytes_max, None)
    assert isinstance(outcome.error, PayloadTooLarge)
    assert state.take_append() is None
    ok(state.put("2", "m", "x@r", "x" * (limits.write_bytes_max // 2), None))


def test_handler_writes_are_bounded_together():
    """A handler whose writes are each small but together exceed write_bytes_max answers PayloadTooLarge."""
    state = new_state(Limits(write_bytes_max=1 * KIB, append_bytes_max=4 * KIB, request_payload_bytes_max=8 * KIB))
    keys = [f"k{i}@r" for i in range(4)]
    outcome = state.execute("h", "put_many", keys[0], {"keys": keys, "value": "x" * 300})
    assert isinstance(outcome.error, PayloadTooLarge)
    assert state.take_append() is None


def test_put_of_none_is_refused():
    """Storing None is refused (delete is the way to remove a key)."""
    state = new_state()
    assert isinstance(state.put("1", "m", "x@r", None, None).error, HandlerError)
    assert state.take_append() is None


# ---- bugs found while writing these tests (see the report) ---------------------------------------------------


def test_handler_sees_the_final_versions_of_its_own_writes():
    """Inside a handler, get_entry of a key it wrote reports the version that key is committed with."""
    state = new_state()
    seen = ok(state.execute("h", "put_two_report_versions", "a@r", None))
    commit(state)
    assert seen == [state.get("m", "a@r")[1], state.get("m", "b@r")[1]]


def test_in_place_mutation_by_a_failing_handler_does_not_reach_committed_state():
    """A handler that mutates a value returned by get() and then raises leaves the committed value unchanged."""
    state = new_state()
    ok(state.put("1", "m", "x@r", {"n": 1}, None))
    commit(state)
    outcome = state.execute("h", "mutate_in_place_then_raise", "x@r", None)
    assert isinstance(outcome.error, HandlerError)
    assert state.take_append() is None
    assert state.get("m", "x@r") == ({"n": 1}, 1)


def test_read_only_handler_sees_committed_entries_and_is_answered_at_once():
    """A read-only handler reads committed state only, needs no op id, and its outcome waits for no append."""
    ro_space = Space("ro", partitions=1)
    ro_space.map("m")

    @ro_space.handler("m", read_only=True)
    def peek(ctx, key, args):
        return ctx.get(key)

    @ro_space.handler("m", read_only=True)
    def sneaky(ctx, key, args):
        ctx.put(key, "nope")

    state = PartitionState(ro_space, 0, Limits())
    state.put("op-1", "m", "k", "committed", None)
    state.take_append()
    state.on_append_committed()
    state.put("op-2", "m", "k", "pending", None)
    outcome = state.execute("", "peek", "k", None)
    assert outcome.error is None and outcome.value == "committed"
    assert outcome.wait_lsn <= state.lsn_committed
    refused = state.execute("", "sneaky", "k", None)
    assert isinstance(refused.error, HandlerError) and "read-only" in str(refused.error)


def test_a_write_without_an_operation_id_is_refused():
    """Every write must carry an operation id: that is what makes retries apply once."""
    ro_space = Space("noid", partitions=1)
    ro_space.map("m")
    state = PartitionState(ro_space, 0, Limits())
    outcome = state.put("", "m", "k", 1, None)
    assert outcome.error is not None and "operation id" in str(outcome.error)
    assert state.get("m", "k") is None and not state.unsent


def test_replay_reports_the_newest_owner_epoch_of_the_log():
    """Replaying an owner's writes sets log_epoch to the epoch they were appended at, which the driver reports
    with ReplayReached (a PU with a stale table must not serve a log holding a newer owner's writes)."""
    newer = new_state()
    newer.set_owner_epoch(2)
    ok(newer.put("p1", "m", "x@r", 1, None))
    state = new_state()
    state.replay(codec.decode(commit(newer).payload, 1 << 20))
    assert state.log_epoch == 2


def test_async_map_writes_are_acknowledged_once_applied_and_still_appended():
    """A write to an async map answers at once and is visible to get; it still goes into the next append."""
    async_space = Space("asyncspace", partitions=1)
    async_space.map("fast", replication="async")
    async_space.map("safe")
    state = PartitionState(async_space, 0, Limits())
    fast = state.put("op-1", "fast", "k", "v1", None)
    assert fast.error is None and fast.wait_lsn <= state.lsn_committed
    assert state.get_encoded("fast", "k") is not None
    safe = state.put("op-2", "safe", "k", "v2", None)
    assert safe.wait_lsn > state.lsn_committed
    assert state.get_encoded("safe", "k") is None
    batch = state.take_append()
    assert batch is not None and batch.record_count == 2
    state.on_append_committed()
    assert state.get("fast", "k") == ("v1", 1) and state.get("safe", "k") == ("v2", 2)


def test_replication_mode_must_be_known():
    """A map's replication is sync or async; anything else is a definition error."""
    from spacegrid.errors import DefinitionError

    with pytest.raises(DefinitionError, match="replication"):
        Space("bad", partitions=1).map("m", replication="eventually")
