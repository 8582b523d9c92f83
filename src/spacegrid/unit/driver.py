"""The lifecycle driver of one PU: turns table changes and I/O results into core.lifecycle events, and performs the
instructions that come out (hand-off waits, store loads, claims, replays, subscriptions, replies)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from spacegrid.core import lifecycle as lc
from spacegrid.core.ownership import plan
from spacegrid.core.recovery import RecoveryBackoff
from spacegrid.core.partition import PartitionState
from spacegrid.engine.changelog import Changelog
from spacegrid.engine.events import NO_EVENTS, EventSink
from spacegrid.engine.subjects import Names
from spacegrid.engine.transport import MessageHandler, Subscription, Transport
from spacegrid.errors import CommitUnknown, Fenced, PoisonedLog, SpacegridError
from spacegrid.limits import Limits
from spacegrid.space import Space
from spacegrid.store.base import Store
from spacegrid.unit.appender import Appender
from spacegrid.unit.backups import Backups
from spacegrid.unit.membership import MembershipAgent
from spacegrid.unit.pump import load_from_store
from spacegrid.unit.slot import Slot

log = logging.getLogger("spacegrid.driver")


class Driver:
    """`reconcile()` after the table changed; `deposed(slot, error)` / `settled(slot)` from the appender.
    `slots` holds the current attempt of every partition the lifecycle knows."""

    def __init__(self, space: Space, limits: Limits, names: Names, member_id: str,
                 time_limit: Callable[[], AbstractContextManager[Any]], transport: Transport, changelog: Changelog,
                 store: Store | None, backups: Backups, appender: Appender, membership: MembershipAgent,
                 on_request: MessageHandler, slots: dict[int, Slot]) -> None:
        self.space = space
        self.limits = limits
        self.names = names
        self.member_id = member_id
        self.time_limit = time_limit
        self.transport = transport
        self.changelog = changelog
        self.store = store
        self.backups = backups
        self.appender = appender
        self.membership = membership
        self.on_request = on_request
        self.lifecycle = lc.Lifecycle()
        self.slots = slots  # shared with the server, which reads it; only the driver changes it
        self.stopping = False
        self.events: EventSink = NO_EVENTS
        self.counters = {"acquired": 0, "released": 0, "promoted": 0, "fenced": 0, "loaded_rows": 0,
                         "recovery_failures": 0, "records_refused": 0, "claims_refused": 0, "replays": 0,
                         "replays_at_once_peak": 0}
        self.recovery = RecoveryBackoff(limits.recovery_retry_s_min, limits.recovery_retry_s_max,
                                        limits.poisoned_retry_s)
        self._subs: dict[tuple[int, int], Subscription] = {}
        self._recovering: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._stimuli = itertools.count(1)
        # A PU taking over many partitions replays them a few at a time: each replay is a consumer of the whole
        # log tail, and dozens at once flooded the connection until NATS cut it as a slow consumer
        self._replay_slots = asyncio.Semaphore(limits.replays_at_once_max)
        self._replays_running = 0

    # ---- queries -------------------------------------------------------------------------------------------

    def active_slots(self) -> list[Slot]:
        return [slot for slot in self.slots.values() if slot.serving]

    def partitions_in(self, *states: lc.State) -> list[int]:
        return self.lifecycle.in_state(*states)

    # ---- stimuli -------------------------------------------------------------------------------------------

    def _stimulus(self, what: str) -> str:
        return f"{what}-{next(self._stimuli)}"

    def reconcile(self) -> None:
        """Acquire what the table gives this PU, release what it took away, follow the partitions it backs up."""
        if self.stopping:
            return
        table = self.membership.table
        held = {p: record.epoch for p, record in self.lifecycle.records.items()}
        decided = plan(table, self.member_id, held)
        stimulus_id = self._stimulus(f"table-v{table.version}")
        for partition in decided.release:
            self.release(partition, f"table v{table.version} gives it to {table.owner(partition)}", stimulus_id)
        now_s = time.monotonic()
        for partition, epoch in decided.acquire:
            if partition not in self.lifecycle.records and not self.recovery.may_try(partition, now_s):
                continue  # its last recovery failed: backing off (one claim per attempt)
            if partition in self.lifecycle.records:
                self.release(partition, f"re-acquiring at epoch {epoch}", stimulus_id)
            if partition in self.lifecycle.records:
                continue  # releasing with an append in flight: acquired again once it settled (a later round)
            self._acquire(partition, epoch, stimulus_id)
        self.backups.sync({p: table.owner(p) or "" for p in table.backed_up_by(self.member_id) if p not in self.slots})

    def release(self, partition: int, reason: str, stimulus_id: str) -> None:
        slot = self.slots.get(partition)
        if slot is None:
            return
        log.info("releasing partition %d: %s", partition, reason)
        self._handle(lc.Unassigned(partition, slot.attempt, stimulus_id, reason, slot.appending))

    def release_all(self, reason: str) -> None:
        stimulus_id = self._stimulus("release-all")
        for partition in list(self.slots):
            self.release(partition, reason, stimulus_id)

    def claimed_elsewhere(self, partition: int) -> None:
        """From the claim view: another PU claimed the partition. A served one with no append in flight is dropped
        now (nothing of its pending writes was appended); one with an append in flight once that settles."""
        slot = self.slots.get(partition)
        if slot is None or not slot.serving or slot.appending or \
                not self.appender.claims.claimed_away(partition, slot.claim_seq):
            return
        self.append_settled(slot, Fenced(f"partition {partition} was claimed by another PU"))

    def append_settled(self, slot: Slot, error: SpacegridError | None) -> None:
        """From the appender: an append of a partition no longer served settled, or an append failed."""
        if error is None:
            self._handle(lc.AppendSettled(slot.partition, slot.attempt, self._stimulus("append-settled")))
            return
        if isinstance(error, Fenced):
            self.counters["fenced"] += 1
            self.events.emit("fenced", partition=slot.partition, epoch=slot.epoch)
            log.warning("partition %d: deposed (%s); dropping it and its uncommitted writes", slot.partition, error)
        else:
            log.warning("partition %d: append outcome unknown (%s); rebuilding it from the log", slot.partition, error)
            error = CommitUnknown(str(error))
        self._handle(lc.Deposed(slot.partition, slot.attempt, self._stimulus("append-failed"), error))
        self.reconcile()

    def _acquire(self, partition: int, epoch: int, stimulus_id: str) -> None:
        attempt = self.lifecycle.next_attempt()
        backup = self.backups.take(partition)
        if backup is not None:
            slot = Slot(partition, attempt, epoch, backup.state, start_seq=backup.applied_seq, promoted=True)
            self.counters["promoted"] += 1
        else:
            state = PartitionState(self.space, partition, self.limits, self.time_limit,
                                   track_dirty=self.store is not None)
            slot = Slot(partition, attempt, epoch, state)
        slot.handoff = self.membership.previous_owner(partition)
        self.slots[partition] = slot
        self._handle(lc.Assigned(partition, attempt, stimulus_id, epoch,
                                 handoff_from=None if slot.handoff is None else slot.handoff[0],
                                 with_store=self.store is not None, promoted=slot.promoted,
                                 start_seq=slot.start_seq))

    def _handle(self, event: lc.Event) -> None:
        slot = self.slots.get(event.partition)
        for instruction in self.lifecycle.handle(event):
            self._perform(instruction)
        if slot is not None:  # the serving flag follows the lifecycle (a new slot starts not serving)
            slot.serving = self.lifecycle.serving(slot.partition, slot.attempt)

    # ---- instructions --------------------------------------------------------------------------------------

    def _perform(self, ins: lc.Instruction) -> None:
        key = (ins.partition, ins.attempt)
        slot = self.slots.get(ins.partition)
        if isinstance(ins, lc.Unsubscribe):
            sub = self._subs.pop(key, None)
            assert sub is not None, f"partition {ins.partition} attempt {ins.attempt}: no subscription to close"
            asyncio.ensure_future(sub.unsubscribe())
            return
        if isinstance(ins, lc.CancelRecovery):
            task = self._recovering.pop(key, None)
            if task is not None:
                task.cancel()
            return
        assert slot is not None and slot.attempt == ins.attempt, f"instruction {ins} for a slot that is gone"
        if isinstance(ins, lc.StartServing):
            previous = self.membership.epochs.owner(ins.partition, ins.epoch - 1)
            if previous is not None and previous != self.member_id:  # a failover or a move, not a first start
                self.events.emit("partition_recovered", partition=ins.partition, epoch=ins.epoch, previous=previous,
                                 promoted=slot.promoted, took_s=round(time.monotonic() - slot.assigned_at_s, 3))
            slot.state.set_owner_epoch(ins.epoch)
            slot.last_seq = ins.last_seq
            slot.claim_seq = ins.claim_seq
            slot.mark_unpersisted()
            self.counters["acquired"] += 1
            self.recovery.succeeded(ins.partition)
        elif isinstance(ins, lc.FailWaiters):
            unpersisted = CommitUnknown(f"partition {ins.partition} moved before the store confirmed the write; it "
                                        "is committed in the log: retry with the same operation id")
            self.appender.fail_waiters(slot, ins.error, unpersisted)
        elif isinstance(ins, lc.Forget):
            del self.slots[ins.partition]
            self.counters["released"] += 1
            if ins.retry:
                log.info("partition %d: recovery abandoned; retried on the next round", ins.partition)
        elif isinstance(ins, lc.Subscribe):
            asyncio.ensure_future(self._subscribe(slot))  # never cancelled: its result always comes back
        else:
            self._recovering[key] = asyncio.create_task(self._recover_step(slot, ins),
                                                        name=f"recover:{ins.partition}")

    async def _subscribe(self, slot: Slot) -> None:
        try:
            sub = await self.transport.subscribe(self.names.partition_subject(slot.partition), self.on_request)
        except Exception as exc:  # the connection is closing or lost: nothing was opened
            self._handle(lc.RecoveryFailed(slot.partition, slot.attempt, self._stimulus("subscribe-failed"), str(exc)))
            return
        self._subs[(slot.partition, slot.attempt)] = sub
        self._handle(lc.SubscriptionReady(slot.partition, slot.attempt, self._stimulus("subscribed")))

    async def _recover_step(self, slot: Slot, ins: lc.Instruction) -> None:
        """Run one I/O step of a recovery and report its result as the next event."""
        p, a = slot.partition, slot.attempt
        try:
            event = await self._io(slot, ins)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._recovery_failed(p, exc)
            event = lc.RecoveryFailed(p, a, self._stimulus("recovery-failed"), str(exc))
        finally:
            if self._recovering.get((p, a)) is asyncio.current_task():
                del self._recovering[(p, a)]
        self._handle(event)

    def _recovery_failed(self, partition: int, exc: Exception) -> None:
        self.counters["recovery_failures"] += 1
        if isinstance(exc, PoisonedLog):
            failure = self.recovery.failed(partition, time.monotonic(), str(exc), exc.seq, exc.subject)
            log.error("PARTITION %d STOPPED: %s. It stays unavailable (tried again every %.0f s, attempt %d) until "
                      "an operator repairs the log: `spacegrid repair --seq %d`", partition, exc,
                      self.limits.poisoned_retry_s, failure.count, exc.seq)
            if failure.count == 1:
                self.events.emit("partition_poisoned", partition=partition, seq=exc.seq, subject=exc.subject)
            return
        failure = self.recovery.failed(partition, time.monotonic(), str(exc))
        log.warning("recovery of partition %d failed (%s); trying again in %.2f s (attempt %d)", partition, exc,
                    failure.retry_at_s - time.monotonic(), failure.count)

    async def _io(self, slot: Slot, ins: lc.Instruction) -> lc.Event:
        p, a = slot.partition, slot.attempt
        if isinstance(ins, lc.WaitForHandoff):
            assert slot.handoff is not None
            await self.membership.wait_adopted(*slot.handoff)
            return lc.HandoffConfirmed(p, a, self._stimulus("handoff"))
        if isinstance(ins, lc.LoadFromStore):
            after_seq = await self._catch_up_with_store(slot, ins.promoted)
            return lc.StoreLoaded(p, a, self._stimulus("loaded"), after_seq)
        if isinstance(ins, lc.AppendClaim):
            seq = await self.changelog.claim(p, ins.epoch, self.member_id, self.limits.claim_attempts_max,
                                             issued=self._issued)
            if seq is None:
                return lc.FenceRejected(p, a, self._stimulus("claimed-at-newer-epoch"))
            return lc.FenceAppended(p, a, self._stimulus("claimed"), seq)
        if isinstance(ins, lc.ReplayLog):
            if self.store is not None and slot.persist.seq >= ins.until_seq:
                await self._forget_stale_position(slot, ins.until_seq)
            size_max_bytes = self.limits.append_bytes_max
            epochs = self.membership.epochs

            def apply(seq: int, writer: str, message: Any) -> None:
                def refusal(epoch: int) -> str | None:
                    return epochs.refusal(p, epoch, writer, epoch_max=slot.epoch)

                for why in slot.state.replay_log_message(message, size_max_bytes, refusal):
                    self.counters["records_refused"] += 1
                    log.error("partition %d: log message %d not applied: %s", p, seq, why)
                    self.events.emit("records_refused", partition=p, seq=seq, writer=writer, reason=why)

            async with self._replay_slots:
                self._replays_running += 1
                assert self._replays_running <= self.limits.replays_at_once_max
                self.counters["replays"] += 1
                self.counters["replays_at_once_peak"] = max(self.counters["replays_at_once_peak"],
                                                            self._replays_running)
                try:
                    seq = await self.changelog.replay(ins.after_seq, ins.until_seq, apply, 2 * size_max_bytes,
                                                      self.limits.replay_timeout_s,
                                                      until_subject=self.names.claim_subject(p))
                finally:
                    self._replays_running -= 1
            return lc.ReplayReached(p, a, self._stimulus("replayed"), seq, slot.state.log_epoch)
        raise AssertionError(f"not an I/O instruction: {ins}")

    async def _issued(self, partition: int, epoch: int) -> bool:
        """Whether the partition table issued `epoch` for the partition (a newer claim is obeyed only then): the
        table this PU runs says so, or the newest one, read from its leader. With no table written there is
        nothing to check against: the claim is obeyed."""
        if self.membership.table.epochs[partition] >= epoch:
            return True
        newest = await self.membership.coord.newest_table()
        if newest is None or newest.epochs[partition] >= epoch:
            return True
        self.counters["claims_refused"] += 1
        self.events.emit("claim_refused", partition=partition, claim_epoch=epoch,
                         reason="the partition table never issued this epoch: claimed over")
        return False

    async def _forget_stale_position(self, slot: Slot, claim_seq: int) -> None:
        """The store's log position of the partition is past its claim: it comes from an earlier stream (NATS lost
        its data, the store kept it). Reset it to 0 so that nothing of this stream is trimmed on its account; the
        pump moves it up again once the partition is persisted or idle."""
        assert self.store is not None
        log.warning("partition %d: the store's log position %d is past its claim at %d: from an earlier log; reset",
                    slot.partition, slot.persist.seq, claim_seq)
        await self.store.persist(slot.partition, (), slot.persist.lsn, 0, advance=True)
        slot.persist.seq = 0

    async def _catch_up_with_store(self, slot: Slot, promoted: bool) -> int:
        """A new owner learns what the store holds: a promoted backup forgets the writes persisted since it
        loaded; a fresh state is loaded from the store (the log holds only what the store may lack, and the
        operation ids of its retained tail). Returns the log position the replay starts after."""
        assert self.store is not None
        progress = await self.store.progress(slot.partition)
        slot.persist.lsn = progress.lsn
        slot.persist.seq = progress.seq
        if promoted:
            slot.state.on_persisted(progress.lsn)
            return slot.start_seq
        loaded = await load_from_store(self.store, slot.state, progress.lsn, self.limits.store_load_batch_rows)
        self.counters["loaded_rows"] += loaded  # not `+= await`: that reads the counter before awaiting
        return 0  # the whole retained tail: it rebuilds the operation ids of the last log_trim_age_s (retries)
