"""The partition lifecycle state machine, by events in and instructions out (no network)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spacegrid.core.lifecycle import (
    AppendOwnerMarker,
    AppendSettled,
    Assigned,
    CancelRecovery,
    Deposed,
    FailWaiters,
    FenceAppended,
    FenceRejected,
    Forget,
    HandoffConfirmed,
    Lifecycle,
    LoadFromStore,
    RecoveryFailed,
    ReplayLog,
    ReplayReached,
    StartServing,
    State,
    StoreLoaded,
    Subscribe,
    SubscriptionReady,
    Unassigned,
    Unsubscribe,
    WaitForHandoff,
)
from spacegrid.errors import CommitUnknown, Fenced, NotOwner


def recover(machine: Lifecycle, partition: int = 3, epoch: int = 5) -> int:
    attempt = machine.next_attempt()
    machine.handle(Assigned(partition, attempt, "t1", epoch))
    machine.handle(ReplayReached(partition, attempt, "r1", seq=10, log_epoch=epoch - 1))
    machine.handle(FenceAppended(partition, attempt, "f1", seq=11))
    machine.handle(SubscriptionReady(partition, attempt, "s1"))
    return attempt


def test_a_fresh_partition_replays_fences_subscribes_then_serves() -> None:
    """Without a store or a previous owner: replay the whole log, append the marker after it, subscribe, serve."""
    machine = Lifecycle()
    a = machine.next_attempt()
    assert machine.handle(Assigned(3, a, "t1", epoch=5)) == [ReplayLog(3, a, "t1", after_seq=0)]
    assert machine.handle(ReplayReached(3, a, "r1", seq=10, log_epoch=4)) == [AppendOwnerMarker(3, a, "r1", 5, 10)]
    assert not machine.serving(3)
    assert machine.handle(FenceAppended(3, a, "f1", seq=11)) == [Subscribe(3, a, "f1")]
    assert not machine.serving(3), "nothing is served before the subscription is ready"
    assert machine.handle(SubscriptionReady(3, a, "s1")) == [StartServing(3, a, "s1", epoch=5, last_seq=11)]
    assert machine.serving(3)
    assert [t.after for t in machine.transitions] == [State.REPLAYING, State.FENCING, State.SUBSCRIBING, State.ACTIVE]
    assert [t.stimulus_id for t in machine.transitions] == ["t1", "r1", "f1", "s1"]


def test_a_handoff_then_the_store_come_before_the_replay() -> None:
    """A partition taken from a live PU waits for its hand-off, then loads from the store, then replays."""
    machine = Lifecycle()
    a = machine.next_attempt()
    out = machine.handle(Assigned(1, a, "t1", epoch=2, handoff_from="pu-a", with_store=True, promoted=True))
    assert out == [WaitForHandoff(1, a, "t1", "pu-a")]
    assert machine.handle(HandoffConfirmed(1, a, "h1")) == [LoadFromStore(1, a, "h1", promoted=True)]
    assert machine.handle(StoreLoaded(1, a, "l1")) == [ReplayLog(1, a, "l1", after_seq=0)]


def test_a_rejected_fence_replays_again_from_where_it_stood() -> None:
    """Someone appended between replay and marker: replay on from the last sequence applied, then fence again."""
    machine = Lifecycle()
    a = machine.next_attempt()
    machine.handle(Assigned(0, a, "t1", epoch=3))
    machine.handle(ReplayReached(0, a, "r1", seq=7, log_epoch=2))
    assert machine.handle(FenceRejected(0, a, "x1")) == [ReplayLog(0, a, "x1", after_seq=7)]
    assert machine.handle(ReplayReached(0, a, "r2", seq=9, log_epoch=2)) == [AppendOwnerMarker(0, a, "r2", 3, 9)]


def test_a_log_with_a_newer_epoch_is_not_claimed() -> None:
    """A stale table: the log already holds a newer owner's marker, so no marker is appended (it would depose
    the rightful owner); the attempt is dropped."""
    machine = Lifecycle()
    a = machine.next_attempt()
    machine.handle(Assigned(0, a, "t1", epoch=3))
    assert machine.handle(ReplayReached(0, a, "r1", seq=7, log_epoch=4)) == [Forget(0, a, "r1", retry=False)]
    assert machine.state_of(0) is State.RELEASED


def test_release_during_the_subscribe_leaves_no_subscription_behind() -> None:
    """The race of the old PU: released while the subscription was being opened. The late SubscriptionReady
    of the abandoned attempt is answered with an Unsubscribe, and nothing is served."""
    machine = Lifecycle()
    a = machine.next_attempt()
    machine.handle(Assigned(2, a, "t1", epoch=1))
    machine.handle(ReplayReached(2, a, "r1", seq=0, log_epoch=0))
    machine.handle(FenceAppended(2, a, "f1", seq=1))
    out = machine.handle(Unassigned(2, a, "t2", reason="table v9 moved it"))
    assert out[0] == CancelRecovery(2, a, "t2")
    assert isinstance(out[1], FailWaiters) and isinstance(out[1].error, NotOwner)
    assert out[2] == Forget(2, a, "t2", retry=False)
    assert machine.handle(SubscriptionReady(2, a, "s1")) == [Unsubscribe(2, a, "s1")]
    assert not machine.serving(2)


def test_release_while_active_unsubscribes_and_fails_the_waiters() -> None:
    """Releasing an Active partition with no append in flight closes its subscription and answers its waiters
    NotOwner (their writes were never appended)."""
    machine = Lifecycle()
    a = recover(machine)
    out = machine.handle(Unassigned(3, a, "t2", reason="moved"))
    assert out[0] == Unsubscribe(3, a, "t2")
    assert isinstance(out[1], FailWaiters) and isinstance(out[1].error, NotOwner)
    assert out[2] == Forget(3, a, "t2", retry=False)


def test_release_with_an_append_in_flight_waits_for_it_to_settle() -> None:
    """An append in flight may commit: its writes are answered by the appender, so the waiters are failed
    only once it settled (and with the append's own error if it failed)."""
    machine = Lifecycle()
    a = recover(machine)
    assert machine.handle(Unassigned(3, a, "t2", reason="moved", append_in_flight=True)) == [Unsubscribe(3, a, "t2")]
    assert machine.state_of(3) is State.RELEASING
    assert machine.handle(Unassigned(3, a, "t3", reason="again")) == []
    out = machine.handle(AppendSettled(3, a, "c1"))
    assert isinstance(out[0], FailWaiters) and isinstance(out[0].error, NotOwner)
    assert machine.state_of(3) is State.RELEASED
    b = recover(machine)
    unknown = CommitUnknown("no ack")
    machine.handle(Unassigned(3, b, "t4", reason="moved", append_in_flight=True))
    assert machine.handle(Deposed(3, b, "c2", unknown))[0] == FailWaiters(3, b, "c2", unknown)


def test_a_fenced_append_deposes_the_owner() -> None:
    """An Active owner whose append the fence refused stops serving at once and answers its waiters Fenced."""
    machine = Lifecycle()
    a = recover(machine)
    error = Fenced("wrong last sequence")
    assert machine.handle(Deposed(3, a, "x", error)) == [Unsubscribe(3, a, "x"), FailWaiters(3, a, "x", error),
                                                         Forget(3, a, "x", retry=False)]
    assert not machine.serving(3)


def test_a_failed_recovery_is_forgotten_for_a_retry() -> None:
    """A recovery step that fails drops the attempt and asks for a retry; its late results are ignored."""
    machine = Lifecycle()
    a = machine.next_attempt()
    machine.handle(Assigned(3, a, "t1", epoch=1, with_store=True))
    assert machine.handle(RecoveryFailed(3, a, "e1", reason="store down")) == [Forget(3, a, "e1", retry=True)]
    assert machine.handle(StoreLoaded(3, a, "late")) == []


def test_epochs_only_grow_across_attempts() -> None:
    """Claiming a partition at an older epoch than a previous attempt is a programming error."""
    machine = Lifecycle()
    a = recover(machine, epoch=5)
    machine.handle(Unassigned(3, a, "t2", reason="moved"))
    with pytest.raises(AssertionError, match="epochs only grow"):
        machine.handle(Assigned(3, machine.next_attempt(), "t3", epoch=4))


def test_an_unexpected_event_is_a_programming_error() -> None:
    """The driver reporting a fence for a partition that is still replaying is a bug, and says so."""
    machine = Lifecycle()
    a = machine.next_attempt()
    machine.handle(Assigned(3, a, "t1", epoch=1))
    with pytest.raises(AssertionError, match="not expected in state replaying"):
        machine.handle(FenceAppended(3, a, "f", seq=1))


# ---- a property: random interleavings of results and releases --------------------------------------------


class ModelDriver:
    """Performs instructions the way unit/driver.py does, with every asynchronous result delayed until the
    test delivers it; counts open subscriptions per partition and checks the invariants after every step."""

    def __init__(self) -> None:
        self.machine = Lifecycle()
        self.open_subs: dict[tuple[int, int], int] = {}
        self.pending: list[object] = []  # events the driver will report later (results of instructions)
        self.seq: dict[int, int] = {}
        self.epoch = 0

    def run(self, instructions: list[object]) -> None:
        for ins in instructions:
            p, a = ins.partition, ins.attempt  # type: ignore[attr-defined]
            if isinstance(ins, WaitForHandoff):
                self.pending.append(HandoffConfirmed(p, a, "h"))
            elif isinstance(ins, LoadFromStore):
                self.pending.append(StoreLoaded(p, a, "l"))
            elif isinstance(ins, ReplayLog):
                self.pending.append(ReplayReached(p, a, "r", seq=max(self.seq.get(p, 0), ins.after_seq), log_epoch=0))
            elif isinstance(ins, AppendOwnerMarker):
                self.seq[p] = ins.after_seq + 1
                self.pending.append(FenceAppended(p, a, "f", seq=ins.after_seq + 1))
                self.pending.append(FenceRejected(p, a, "x"))  # the test picks one of the two
            elif isinstance(ins, Subscribe):
                self.open_subs[(p, a)] = self.open_subs.get((p, a), 0) + 1
                self.pending.append(SubscriptionReady(p, a, "s"))
            elif isinstance(ins, Unsubscribe):
                assert self.open_subs.get((p, a), 0) == 1, f"unsubscribing {(p, a)} that is not open"
                del self.open_subs[(p, a)]
            elif isinstance(ins, CancelRecovery):
                self.pending = [e for e in self.pending if not (e.partition == p and e.attempt == a  # type: ignore
                                                               and not isinstance(e, SubscriptionReady))]
        self.check()

    def deliver(self, index: int) -> None:
        if not self.pending:
            return
        event = self.pending.pop(index % len(self.pending))
        if isinstance(event, (FenceAppended, FenceRejected)):  # only one of the pair happens
            self.pending = [e for e in self.pending if not (isinstance(e, (FenceAppended, FenceRejected))
                                                            and e.partition == event.partition
                                                            and e.attempt == event.attempt)]
        self.run(self.machine.handle(event))  # type: ignore[arg-type]

    def assign(self, partition: int) -> None:
        if partition in self.machine.records:
            return
        self.epoch += 1
        self.run(self.machine.handle(Assigned(partition, self.machine.next_attempt(), "t", self.epoch)))

    def release(self, partition: int, in_flight: bool) -> None:
        record = self.machine.records.get(partition)
        if record is not None:
            self.run(self.machine.handle(Unassigned(partition, record.attempt, "u", "moved", in_flight)))

    def settle(self, partition: int) -> None:
        record = self.machine.records.get(partition)
        if record is not None and record.state is State.RELEASING:
            self.run(self.machine.handle(AppendSettled(partition, record.attempt, "c")))

    def check(self) -> None:
        for (p, a), count in self.open_subs.items():
            record = self.machine.records.get(p)
            current = record is not None and record.attempt == a
            pending_ready = any(isinstance(e, SubscriptionReady) and e.partition == p and e.attempt == a
                                for e in self.pending)
            assert count == 1
            assert pending_ready or (current and record.state is State.ACTIVE), \
                f"subscription of partition {p} attempt {a} is open but nothing owns it"
        for p, record in self.machine.records.items():
            if record.state is State.ACTIVE:
                assert self.open_subs.get((p, record.attempt)) == 1, "an Active partition has one subscription"


actions = st.lists(st.tuples(st.sampled_from(["assign", "release", "release-inflight", "settle", "deliver"]),
                             st.integers(0, 2), st.integers(0, 50)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(actions)
def test_no_interleaving_leaks_a_subscription_or_serves_unfenced(steps: list[tuple[str, int, int]]) -> None:
    """Over random interleavings of assignments, releases (with and without appends in flight), settled appends
    and delayed results of every instruction, an Active partition always has exactly one open subscription, no
    subscription stays open without an owner once its result is delivered, and after everything is released
    and delivered none is open at all."""
    driver = ModelDriver()
    for action, partition, index in steps:
        if action == "assign":
            driver.assign(partition)
        elif action == "release":
            driver.release(partition, in_flight=False)
        elif action == "release-inflight":
            driver.release(partition, in_flight=driver.machine.serving(partition))
        elif action == "settle":
            driver.settle(partition)
        else:
            driver.deliver(index)
    for partition in range(3):
        driver.release(partition, in_flight=False)
        driver.settle(partition)
    while driver.pending:
        driver.deliver(0)
    assert driver.open_subs == {}
    assert driver.machine.records == {}
