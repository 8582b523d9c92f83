"""A partition this PU owns or is acquiring: its state, its fence position and the requests waiting on it."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from spacegrid.core.partition import Outcome, PartitionState
from spacegrid.unit.pump import PersistState

Waiter = tuple[int, str, int, Outcome]  # (log position it waits for, reply subject, request id, outcome)


@dataclass(eq=False)
class Slot:
    """One attempt at holding a partition (see core.lifecycle): the state the lifecycle says is served only
    once Active, its claim and log position, replies waiting for commits, read-through waiters."""

    partition: int
    attempt: int
    epoch: int
    state: PartitionState
    last_seq: int = 0  # the last log message holding this partition's writes (or its claim): the store's position
    claim_seq: int = 0  # this attempt's ownership claim: a later claim by another PU deposes it
    start_seq: int = 0  # a promoted backup has applied the log so far: replay starts after it
    promoted: bool = False
    handoff: tuple[str, int] | None = None  # (previous owner, table version that moved it) to wait for
    assigned_at_s: float = field(default_factory=time.monotonic)  # when the table gave it to this PU
    waiters: deque[Waiter] = field(default_factory=deque)
    serving: bool = False  # the lifecycle has this attempt Active (kept by the driver after every event)
    appending: bool = False
    queued: bool = False
    loading: dict[tuple[str, str], list[tuple[Any, str, float]]] = field(default_factory=dict)  # read-through waiters
    # (request, reply subject, when it arrived)
    persist: PersistState = field(default_factory=PersistState)

    def mark_unpersisted(self) -> None:
        """Committed writes the store lacks exist from now (if none did before)."""
        if self.state.dirty and self.persist.unpersisted_since_s is None:
            self.persist.unpersisted_since_s = time.monotonic()
