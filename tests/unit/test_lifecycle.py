"""The partition lifecycle state machine, by events in and instructions out (no network)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spacegrid.core.lifecycle import (
    AppendClaim,
    AppendSettled,
    Assigned,
    CancelRecovery,
    Deposed,
    Event,
    FailWaiters,
    FenceAppended,
    FenceRejected,
    Forget,
    HandoffConfirmed,
    Instruction,
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
    machine.handle(FenceAppended(partition, attempt, "f1", seq=11))
    machine.handle(ReplayReached(partition, attempt, "r1", seq=11, log_epoch=epoch - 1))
    machine.handle(SubscriptionReady(partition, attempt, "s1"))
    return attempt


def test_a_fresh_partition_claims_replays_subscribes_then_serves() -> None:
    """Without a store or a previous owner: append the claim, replay the log up to it, subscribe, serve."""
    machine = Lifecycle()
    a = machine.next_attempt()
    assert machine.handle(Assigned(3, a, "t1", epoch=5)) == [AppendClaim(3, a, "t1", epoch=5)]
    assert not machine.serving(3)
    assert machine.handle(FenceAppended(3, a, "f1", seq=11)) == [ReplayLog(3, a, "f1", after_seq=0, until_seq=11)]
    assert not machine.serving(3), "nothing is served before the log is replayed up to the claim"
    assert machine.handle(ReplayReached(3, a, "r1", seq=11, log_epoch=4)) == [Subscribe(3, a, "r1")]
    assert not machine.serving(3), "nothing is served before the subscription is ready"
    assert machine.handle(SubscriptionReady(3, a, "s1")) == [StartServing(3, a, "s1", epoch=5, last_seq=11,
                                                                          claim_seq=11)]
    assert machine.serving(3) and machine.serving(3, a) and not machine.serving(3, a + 1)
    assert [t.after for t in machine.transitions] == [State.FENCING, State.REPLAYING, State.SUBSCRIBING, State.ACTIVE]
    assert [t.stimulus_id for t in machine.transitions] == ["t1", "f1", "r1", "s1"]


def test_a_handoff_then_the_store_come_before_the_claim() -> None:
    """A partition taken from a live PU waits for its hand-off, then loads from the store, then claims it."""
    machine = Lifecycle()
    a = machine.next_attempt()
    out = machine.handle(Assigned(1, a, "t1", epoch=2, handoff_from="pu-a", with_store=True, promoted=True))
    assert out == [WaitForHandoff(1, a, "t1", "pu-a")]
    assert machine.state_of(1) is State.AWAITING_HANDOFF
    assert machine.handle(HandoffConfirmed(1, a, "h1")) == [LoadFromStore(1, a, "h1", promoted=True)]
    assert machine.state_of(1) is State.LOADING
    assert machine.handle(StoreLoaded(1, a, "l1", after_seq=40)) == [AppendClaim(1, a, "l1", epoch=2)]
    assert machine.state_of(1) is State.FENCING


def test_a_handoff_without_a_store_claims_right_after_it() -> None:
    """Without a store, the claim is appended as soon as the previous owner confirmed the hand-off."""
    machine = Lifecycle()
    a = machine.next_attempt()
    assert machine.handle(Assigned(1, a, "t1", epoch=2, handoff_from="pu-a")) == [WaitForHandoff(1, a, "t1", "pu-a")]
    assert machine.handle(HandoffConfirmed(1, a, "h1")) == [AppendClaim(1, a, "h1", epoch=2)]


def test_the_replay_is_bounded_by_the_claim() -> None:
    """The replay starts where the store's copy ends (StoreLoaded.after_seq) and stops at this owner's claim
    (ReplayLog.until_seq is the claim's seq); a replay result short of the claim is a driver bug."""
    machine = Lifecycle()
    a = machine.next_attempt()
    machine.handle(Assigned(4, a, "t1", epoch=7, with_store=True))
    machine.handle(StoreLoaded(4, a, "l1", after_seq=40))
    assert machine.handle(FenceAppended(4, a, "f1", seq=57)) == [ReplayLog(4, a, "f1", after_seq=40, until_seq=57)]
    with pytest.raises(AssertionError, match="the replay reaches the claim"):
        machine.handle(ReplayReached(4, a, "r0", seq=56, log_epoch=6))
    assert machine.handle(ReplayReached(4, a, "r1", seq=57, log_epoch=6)) == [Subscribe(4, a, "r1")]
    assert machine.handle(SubscriptionReady(4, a, "s1")) == [StartServing(4, a, "s1", epoch=7, last_seq=57,
                                                                          claim_seq=57)]


def test_a_promoted_backup_replays_from_what_it_applied() -> None:
    """A promoted hot backup already follows the log up to start_seq: its replay starts there (or where the
    store says, never earlier), and its claim must land after it."""
    machine = Lifecycle()
    a = machine.next_attempt()
    assert machine.handle(Assigned(2, a, "t1", epoch=3, promoted=True, start_seq=30)) == [AppendClaim(2, a, "t1", 3)]
    assert machine.handle(FenceAppended(2, a, "f1", seq=31)) == [ReplayLog(2, a, "f1", after_seq=30, until_seq=31)]

    b = machine.next_attempt()
    machine.handle(Assigned(5, b, "t2", epoch=3, with_store=True, promoted=True, start_seq=30))
    with pytest.raises(AssertionError, match="sequences only advance"):
        machine.handle(StoreLoaded(5, b, "l0", after_seq=29))
    machine.handle(StoreLoaded(5, b, "l1", after_seq=30))
    with pytest.raises(AssertionError, match="a claim lands after everything the state has applied"):
        machine.handle(FenceAppended(5, b, "f0", seq=30))


def test_a_claim_rejected_for_a_newer_epoch_forgets_without_retry() -> None:
    """FenceRejected: the partition's last claim is at a newer epoch, so this PU's table is stale. The attempt is
    dropped for good (Forget without retry), nothing is replayed or subscribed, and late results are ignored."""
    machine = Lifecycle()
    a = machine.next_attempt()
    machine.handle(Assigned(0, a, "t1", epoch=3))
    assert machine.handle(FenceRejected(0, a, "x1")) == [Forget(0, a, "x1", retry=False)]
    assert machine.state_of(0) is State.RELEASED and not machine.serving(0)
    assert machine.handle(FenceAppended(0, a, "late", seq=9)) == []
    b = machine.next_attempt()
    machine.handle(Assigned(1, b, "t2", epoch=3, with_store=True))
    machine.handle(StoreLoaded(1, b, "l1", after_seq=12))
    assert machine.handle(FenceRejected(1, b, "x2")) == [Forget(1, b, "x2", retry=False)]
    assert machine.records == {}


def test_a_log_with_a_newer_epoch_is_not_served() -> None:
    """A stale table: the replay up to our claim finds writes of a newer owner epoch, so the partition is not
    served (it would answer from a state the rightful owner has moved past); the attempt is dropped for good."""
    machine = Lifecycle()
    a = machine.next_attempt()
    machine.handle(Assigned(0, a, "t1", epoch=3))
    machine.handle(FenceAppended(0, a, "f1", seq=8))
    assert machine.handle(ReplayReached(0, a, "r1", seq=8, log_epoch=4)) == [Forget(0, a, "r1", retry=False)]
    assert machine.state_of(0) is State.RELEASED


def test_release_during_the_subscribe_leaves_no_subscription_behind() -> None:
    """The race of the old PU: released while the subscription was being opened. The late SubscriptionReady
    of the abandoned attempt is answered with an Unsubscribe, and nothing is served."""
    machine = Lifecycle()
    a = machine.next_attempt()
    machine.handle(Assigned(2, a, "t1", epoch=1))
    machine.handle(FenceAppended(2, a, "f1", seq=1))
    machine.handle(ReplayReached(2, a, "r1", seq=1, log_epoch=0))
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
    error = Fenced("a newer claim")
    assert machine.handle(Deposed(3, a, "x", error)) == [Unsubscribe(3, a, "x"), FailWaiters(3, a, "x", error),
                                                         Forget(3, a, "x", retry=False)]
    assert not machine.serving(3)


def test_a_failed_recovery_is_forgotten_for_a_retry() -> None:
    """A recovery step that fails (loading, claiming or replaying) drops the attempt and asks for a retry; its
    late results are ignored."""
    machine = Lifecycle()
    a = machine.next_attempt()
    machine.handle(Assigned(3, a, "t1", epoch=1, with_store=True))
    assert machine.handle(RecoveryFailed(3, a, "e1", reason="store down")) == [Forget(3, a, "e1", retry=True)]
    assert machine.handle(StoreLoaded(3, a, "late", after_seq=0)) == []
    b = machine.next_attempt()
    machine.handle(Assigned(3, b, "t2", epoch=1))
    assert machine.handle(RecoveryFailed(3, b, "e2", reason="log down")) == [Forget(3, b, "e2", retry=True)]
    assert machine.handle(FenceAppended(3, b, "late", seq=4)) == []
    c = machine.next_attempt()
    machine.handle(Assigned(3, c, "t3", epoch=1))
    machine.handle(FenceAppended(3, c, "f3", seq=5))
    assert machine.handle(RecoveryFailed(3, c, "e3", reason="replay timed out")) == [Forget(3, c, "e3", retry=True)]
    assert machine.handle(ReplayReached(3, c, "late", seq=5, log_epoch=0)) == []
    assert machine.records == {}


def test_epochs_only_grow_across_attempts() -> None:
    """Claiming a partition at an older epoch than a previous attempt is a programming error."""
    machine = Lifecycle()
    a = recover(machine, epoch=5)
    machine.handle(Unassigned(3, a, "t2", reason="moved"))
    with pytest.raises(AssertionError, match="epochs only grow"):
        machine.handle(Assigned(3, machine.next_attempt(), "t3", epoch=4))


def test_an_unexpected_event_is_a_programming_error() -> None:
    """The driver reporting a replay result for a partition whose claim is not appended yet is a bug, and says
    so."""
    machine = Lifecycle()
    a = machine.next_attempt()
    machine.handle(Assigned(3, a, "t1", epoch=1))
    with pytest.raises(AssertionError, match="not expected in state fencing"):
        machine.handle(ReplayReached(3, a, "r", seq=1, log_epoch=0))


# ---- a property: random interleavings of results and releases --------------------------------------------


class ModelDriver:
    """Performs instructions the way unit/driver.py does, with every asynchronous result delayed until the
    test delivers it; counts open subscriptions per partition and checks the invariants after every step.

    The log is one sequence for all partitions (`head`): a claim lands after everything in it. An instruction
    with several possible outcomes queues them together, the usual one first; the delivery picks one."""

    def __init__(self) -> None:
        self.machine = Lifecycle()
        self.open_subs: dict[tuple[int, int], int] = {}
        self.pending: list[list[Event]] = []  # the possible results of an instruction, reported later
        self.head = 0  # the log's last sequence
        self.epoch = 0
        self.claims: dict[tuple[int, int], int] = {}  # attempt -> the seq its claim landed at
        self.replayed: dict[tuple[int, int], int] = {}  # attempt -> the seq its replay reached
        self.delivered: Event | None = None

    def later(self, *outcomes: Event) -> None:
        self.pending.append(list(outcomes))

    def run(self, instructions: list[Instruction]) -> None:
        for ins in instructions:
            p, a = ins.partition, ins.attempt
            if isinstance(ins, WaitForHandoff):
                self.later(HandoffConfirmed(p, a, "h"))
            elif isinstance(ins, LoadFromStore):
                self.later(StoreLoaded(p, a, "l", after_seq=self.head), RecoveryFailed(p, a, "e", "store down"))
            elif isinstance(ins, AppendClaim):
                assert ins.epoch == self.machine.records[p].epoch
                self.head += 1
                self.later(FenceAppended(p, a, "f", seq=self.head), FenceRejected(p, a, "x"),
                           RecoveryFailed(p, a, "e", "log down"))
            elif isinstance(ins, ReplayLog):
                assert ins.until_seq == self.claims.get((p, a)), "the replay stops at this attempt's claim"
                assert ins.after_seq < ins.until_seq
                self.later(ReplayReached(p, a, "r", seq=ins.until_seq, log_epoch=0),
                           ReplayReached(p, a, "r", seq=ins.until_seq, log_epoch=self.epoch + 1),
                           RecoveryFailed(p, a, "e", "replay timed out"))
            elif isinstance(ins, Subscribe):
                self.open_subs[(p, a)] = self.open_subs.get((p, a), 0) + 1
                self.later(SubscriptionReady(p, a, "s"))
            elif isinstance(ins, StartServing):
                assert ins.claim_seq == self.claims.get((p, a)), "served only after this attempt's claim landed"
                assert ins.last_seq == self.replayed.get((p, a), -1) >= ins.claim_seq, "served only once replayed"
            elif isinstance(ins, Unsubscribe):
                assert self.open_subs.get((p, a), 0) == 1, f"unsubscribing {(p, a)} that is not open"
                del self.open_subs[(p, a)]
            elif isinstance(ins, CancelRecovery):
                self.pending = [outcomes for outcomes in self.pending
                                if not (outcomes[0].partition == p and outcomes[0].attempt == a
                                        and not isinstance(outcomes[0], SubscriptionReady))]
            elif isinstance(ins, Forget):
                assert ins.retry == isinstance(self.delivered, RecoveryFailed), "only a failed step is retried"
        self.check()

    def deliver(self, index: int) -> None:
        if not self.pending:
            return
        outcomes = self.pending.pop(index % len(self.pending))
        # mostly the usual outcome, so that partitions get Active; otherwise one of the others
        event = outcomes[0] if index % 4 or len(outcomes) == 1 else outcomes[1 + index // 4 % (len(outcomes) - 1)]
        if isinstance(event, FenceAppended):
            self.claims[(event.partition, event.attempt)] = event.seq
        elif isinstance(event, ReplayReached):
            self.replayed[(event.partition, event.attempt)] = event.seq
        self.delivered = event
        self.run(self.machine.handle(event))
        self.delivered = None

    def assign(self, partition: int, variant: int) -> None:
        if partition in self.machine.records:
            return
        self.epoch += 1
        promoted = bool(variant & 4)
        event = Assigned(partition, self.machine.next_attempt(), "t", self.epoch,
                         handoff_from="pu-old" if variant & 1 else None, with_store=bool(variant & 2),
                         promoted=promoted, start_seq=self.head if promoted else 0)
        self.run(self.machine.handle(event))

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
                                for outcomes in self.pending for e in outcomes)
            assert count == 1
            assert pending_ready or (current and record.state is State.ACTIVE), \
                f"subscription of partition {p} attempt {a} is open but nothing owns it"
        for p, record in self.machine.records.items():
            if record.state is State.ACTIVE:
                assert self.open_subs.get((p, record.attempt)) == 1, "an Active partition has one subscription"
                assert self.machine.serving(p, record.attempt)
                assert record.claim_seq == self.claims.get((p, record.attempt)) <= record.seq, \
                    "an Active partition's claim landed and the log was replayed up to it"
            else:
                assert not self.machine.serving(p)


actions = st.lists(st.tuples(st.sampled_from(["assign", "release", "release-inflight", "settle", "deliver"]),
                             st.integers(0, 2), st.integers(0, 50)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(actions)
def test_no_interleaving_leaks_a_subscription_or_serves_unfenced(steps: list[tuple[str, int, int]]) -> None:
    """Over random interleavings of assignments (with and without hand-off, store and promotion), releases (with
    and without appends in flight), settled appends and delayed results of every instruction (claims appended or
    rejected, replays finding a newer epoch or not, failed steps), an Active partition always has exactly one
    open subscription and is served only after its claim landed and the log was replayed up to it, no
    subscription stays open without an owner once its result is delivered, and after everything is released
    and delivered none is open at all."""
    driver = ModelDriver()
    for action, partition, index in steps:
        if action == "assign":
            driver.assign(partition, index)
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
