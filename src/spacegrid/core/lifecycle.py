"""The partition lifecycle on one PU as a pure state machine: events in, instructions out, no I/O.

A partition the table gives this PU goes Assigned -> (AwaitingHandoff) -> (Loading) -> Fencing -> Replaying ->
Subscribing -> Active, and leaves through Releasing (an append still in flight) to Released. The driver
(unit/driver.py) performs the instructions and reports their results back as events; every event carries a
stimulus id, and every transition is kept in a bounded log that says why a partition is where it is.

Invariants, asserted after every event:
- nothing is served before this owner's claim is in the log and the log was replayed up to it: `serving` only in
  Active (ADR 0009: the claim fences every earlier owner's appends, so the replay sees all they committed);
- an Active partition has exactly one subscription, and a partition that is not Active or Subscribing has none
  open from this attempt once the driver has done what it was told;
- the epoch a partition is claimed at never goes down from one attempt to the next.

Each acquisition is an *attempt* with a number unique on this PU; events name the attempt they report on, so a
late result of an abandoned attempt (a subscription that completes after the partition was released) is told
apart from the current one and cleaned up instead of adopted.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from spacegrid.errors import NotOwner, SpacegridError

TRANSITION_LOG_MAX: Final = 4096  # transitions kept for debugging (all partitions together)


class State(enum.Enum):
    AWAITING_HANDOFF = "awaiting-handoff"  # the previous owner still runs the table that moved it away
    LOADING = "loading"  # reading the store's copy (or, promoted, what the store persisted since)
    FENCING = "fencing"  # appending this owner's claim (compare-and-set on the partition's last claim)
    REPLAYING = "replaying"  # applying the log's tail, up to the claim
    SUBSCRIBING = "subscribing"  # replayed up to the claim; opening the partition's request subscription
    ACTIVE = "active"  # serving
    RELEASING = "releasing"  # released while an append was in flight: its waiters are answered when it settles
    RELEASED = "released"  # terminal


RECOVERING: Final = frozenset({State.AWAITING_HANDOFF, State.LOADING, State.FENCING, State.REPLAYING, State.SUBSCRIBING})


# ---- events -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    partition: int
    attempt: int
    stimulus_id: str


@dataclass(frozen=True, slots=True)
class Assigned(Event):
    """The table gives this PU the partition at `epoch`. `handoff_from`: a live previous owner that must first
    adopt the table; `with_store`: catch up with the store before replaying; `promoted`: the state is a hot
    backup's replica, already loaded and following the log up to `start_seq`."""

    epoch: int
    handoff_from: str | None = None
    with_store: bool = False
    promoted: bool = False
    start_seq: int = 0


@dataclass(frozen=True, slots=True)
class HandoffConfirmed(Event):
    """The previous owner adopted the table (or is gone, or stayed silent past the bound)."""


@dataclass(frozen=True, slots=True)
class StoreLoaded(Event):
    """The state holds what the store persisted; the log's tail to replay starts after `after_seq`."""

    after_seq: int


@dataclass(frozen=True, slots=True)
class ReplayReached(Event):
    """The state has applied the log up to `seq`; the newest ownership epoch in it is `log_epoch`."""

    seq: int
    log_epoch: int


@dataclass(frozen=True, slots=True)
class FenceAppended(Event):
    """This owner's claim was appended at `seq`: no earlier owner can append after it."""

    seq: int


@dataclass(frozen=True, slots=True)
class FenceRejected(Event):
    """The partition's last claim is at a newer epoch than ours: our table is stale; give the partition up."""


@dataclass(frozen=True, slots=True)
class SubscriptionReady(Event):
    """The partition's request subscription is open."""


@dataclass(frozen=True, slots=True)
class RecoveryFailed(Event):
    """A recovery step failed (the log, the store or JetStream); the attempt is abandoned and retried later."""

    reason: str


@dataclass(frozen=True, slots=True)
class Unassigned(Event):
    """The partition must go: the table moved it, the PU was declared dead or stops. `append_in_flight`: an append
    of its writes has not settled yet."""

    reason: str
    append_in_flight: bool = False


@dataclass(frozen=True, slots=True)
class Deposed(Event):
    """An append was refused by the fence (another owner appended) or its outcome is unknown: drop the partition
    (Active or Releasing); its waiters get `error` (Fenced: not applied; CommitUnknown: maybe applied)."""

    error: SpacegridError


@dataclass(frozen=True, slots=True)
class AppendSettled(Event):
    """The append that was in flight when the partition was released was acknowledged (its writes are committed
    and answered); the writes behind it were never appended."""


# ---- instructions -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Instruction:
    partition: int
    attempt: int
    stimulus_id: str


@dataclass(frozen=True, slots=True)
class WaitForHandoff(Instruction):
    previous_owner: str


@dataclass(frozen=True, slots=True)
class LoadFromStore(Instruction):
    promoted: bool


@dataclass(frozen=True, slots=True)
class ReplayLog(Instruction):
    """Apply the partition's records of the log after `after_seq` up to this owner's claim at `until_seq`."""

    after_seq: int
    until_seq: int


@dataclass(frozen=True, slots=True)
class AppendClaim(Instruction):
    """Claim the partition at `epoch` in the log (fencing every earlier owner)."""

    epoch: int


@dataclass(frozen=True, slots=True)
class Subscribe(Instruction):
    pass


@dataclass(frozen=True, slots=True)
class Unsubscribe(Instruction):
    pass


@dataclass(frozen=True, slots=True)
class StartServing(Instruction):
    """Active from now: owner epoch `epoch`, the log replayed to `last_seq`, the claim at `claim_seq`."""

    epoch: int
    last_seq: int
    claim_seq: int


@dataclass(frozen=True, slots=True)
class CancelRecovery(Instruction):
    pass


@dataclass(frozen=True, slots=True)
class FailWaiters(Instruction):
    """Answer every request waiting on the partition's commits with `error` (nothing of theirs is committed)."""

    error: SpacegridError


@dataclass(frozen=True, slots=True)
class Forget(Instruction):
    """Drop the attempt's state; `retry`: recovery failed and the table still says this PU owns it."""

    retry: bool


# ---- the machine --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class PartitionRecord:
    partition: int
    attempt: int
    epoch: int
    state: State
    with_store: bool
    promoted: bool
    seq: int = 0  # the log sequence the state has applied
    claim_seq: int = 0  # this attempt's claim, once appended
    subscribed: bool = False


@dataclass(frozen=True, slots=True)
class Transition:
    stimulus_id: str
    partition: int
    attempt: int
    event: str
    before: State | None
    after: State


@dataclass
class Lifecycle:
    """Every partition this PU holds or is acquiring, by partition number. `handle(event)` -> instructions."""

    records: dict[int, PartitionRecord] = field(default_factory=dict)
    transitions: deque[Transition] = field(default_factory=lambda: deque(maxlen=TRANSITION_LOG_MAX))
    epochs: dict[int, int] = field(default_factory=dict)  # the last epoch claimed per partition: only grows
    _attempts: int = 0

    def next_attempt(self) -> int:
        self._attempts += 1
        return self._attempts

    def state_of(self, partition: int) -> State:
        record = self.records.get(partition)
        return State.RELEASED if record is None else record.state

    def serving(self, partition: int, attempt: int | None = None) -> bool:
        """The partition is Active (in this attempt, if given): its requests may be served."""
        record = self.records.get(partition)
        return record is not None and record.state is State.ACTIVE and attempt in (None, record.attempt)

    def in_state(self, *states: State) -> list[int]:
        return sorted(p for p, record in self.records.items() if record.state in states)

    def handle(self, event: Event) -> list[Instruction]:
        record = self.records.get(event.partition)
        before = None if record is None else record.state
        if isinstance(event, Assigned):
            instructions = self._assigned(event, record)
        elif record is None or record.attempt != event.attempt:
            instructions = self._stale(event)
        else:
            instructions = self._step(record, event)
        after = self.state_of(event.partition)
        if before is not after or isinstance(event, Assigned):
            attempt = event.attempt
            self.transitions.append(Transition(event.stimulus_id, event.partition, attempt, type(event).__name__,
                                               before, after))
        self._check(event.partition)
        return instructions

    # ---- transitions ---------------------------------------------------------------------------------------

    def _assigned(self, event: Assigned, record: PartitionRecord | None) -> list[Instruction]:
        assert record is None, f"partition {event.partition} assigned while {record and record.state.value}: " \
            "the driver assigns only partitions it holds no record of (a releasing one settles first)"
        previous_epoch = self.epochs.get(event.partition, 0)
        assert event.epoch >= previous_epoch, f"epochs only grow: {event.epoch} after {previous_epoch}"
        assert event.attempt <= self._attempts, "attempts come from next_attempt()"
        self.epochs[event.partition] = event.epoch
        self.records[event.partition] = new = PartitionRecord(event.partition, event.attempt, event.epoch,
                                                              State.AWAITING_HANDOFF, event.with_store, event.promoted,
                                                              seq=event.start_seq)
        if event.handoff_from is not None:
            return [WaitForHandoff(event.partition, event.attempt, event.stimulus_id, event.handoff_from)]
        return self._after_handoff(new, event.stimulus_id)

    def _after_handoff(self, record: PartitionRecord, stimulus_id: str) -> list[Instruction]:
        if record.with_store:
            record.state = State.LOADING
            return [LoadFromStore(record.partition, record.attempt, stimulus_id, record.promoted)]
        return self._claim(record, stimulus_id)

    def _claim(self, record: PartitionRecord, stimulus_id: str) -> list[Instruction]:
        record.state = State.FENCING
        return [AppendClaim(record.partition, record.attempt, stimulus_id, record.epoch)]

    def _step(self, record: PartitionRecord, event: Event) -> list[Instruction]:
        state = record.state
        p, a, sid = record.partition, record.attempt, event.stimulus_id
        if isinstance(event, Unassigned):
            return self._unassigned(record, event)
        if isinstance(event, HandoffConfirmed) and state is State.AWAITING_HANDOFF:
            return self._after_handoff(record, sid)
        if isinstance(event, StoreLoaded) and state is State.LOADING:
            assert event.after_seq >= record.seq, "sequences only advance"
            record.seq = event.after_seq
            return self._claim(record, sid)
        if isinstance(event, FenceRejected) and state is State.FENCING:
            return self._forget(record, sid, retry=False)
        if isinstance(event, FenceAppended) and state is State.FENCING:
            assert event.seq > record.seq, "a claim lands after everything the state has applied"
            record.claim_seq = event.seq
            record.state = State.REPLAYING
            return [ReplayLog(p, a, sid, record.seq, record.claim_seq)]
        if isinstance(event, ReplayReached) and state is State.REPLAYING:
            assert event.seq >= record.claim_seq, "the replay reaches the claim"
            record.seq = event.seq
            if event.log_epoch > record.epoch:  # a newer owner's writes are in the log: our table is stale
                return self._forget(record, sid, retry=False)
            record.state = State.SUBSCRIBING
            return [Subscribe(p, a, sid)]
        if isinstance(event, SubscriptionReady) and state is State.SUBSCRIBING:
            record.subscribed = True
            record.state = State.ACTIVE
            return [StartServing(p, a, sid, record.epoch, record.seq, record.claim_seq)]
        if isinstance(event, RecoveryFailed) and state in RECOVERING:
            return self._forget(record, sid, retry=True)
        if isinstance(event, Deposed) and state in (State.ACTIVE, State.RELEASING):
            return [*self._close(record, sid), FailWaiters(p, a, sid, event.error), *self._forget(record, sid, False)]
        if isinstance(event, AppendSettled) and state is State.RELEASING:
            moved = NotOwner(f"partition {p} moved before these writes were appended")
            return [FailWaiters(p, a, sid, moved), *self._forget(record, sid, retry=False)]
        raise AssertionError(f"partition {p}: {type(event).__name__} is not expected in state {state.value}")

    def _unassigned(self, record: PartitionRecord, event: Unassigned) -> list[Instruction]:
        p, a, sid = record.partition, record.attempt, event.stimulus_id
        state = record.state
        if state is State.RELEASING:
            return []
        instructions: list[Instruction] = []
        if state in RECOVERING:
            instructions.append(CancelRecovery(p, a, sid))  # an open Subscribe completes as a stale event
        instructions += self._close(record, sid)
        if state is State.ACTIVE and event.append_in_flight:
            record.state = State.RELEASING
            return instructions
        moved = NotOwner(f"partition {p} moved: {event.reason}")
        return [*instructions, FailWaiters(p, a, sid, moved), *self._forget(record, sid, retry=False)]

    def _close(self, record: PartitionRecord, stimulus_id: str) -> list[Instruction]:
        if not record.subscribed:
            return []
        record.subscribed = False
        return [Unsubscribe(record.partition, record.attempt, stimulus_id)]

    def _forget(self, record: PartitionRecord, stimulus_id: str, retry: bool) -> list[Instruction]:
        record.state = State.RELEASED
        del self.records[record.partition]
        return [*self._close(record, stimulus_id), Forget(record.partition, record.attempt, stimulus_id, retry)]

    def _stale(self, event: Event) -> list[Instruction]:
        """A result of an attempt that was abandoned: undo what it opened, ignore the rest."""
        if isinstance(event, SubscriptionReady):
            return [Unsubscribe(event.partition, event.attempt, event.stimulus_id)]
        return []

    def _check(self, partition: int) -> None:
        record = self.records.get(partition)
        if record is None:
            return
        assert record.state is not State.RELEASED, "released records are dropped"
        assert (record.state is State.ACTIVE) == record.subscribed, \
            f"partition {partition}: {record.state.value} with subscribed={record.subscribed}"
        assert self.epochs[partition] == record.epoch, "the record's epoch is the last claimed"
