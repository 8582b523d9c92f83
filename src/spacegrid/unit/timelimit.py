"""A limit on handler and query code, per call and per event-loop tick: a watchdog thread signals the PU's main
thread (SIGALRM) when user code runs past its deadline, and the signal handler raises HandlerTimeout inside that
code. The tick's budget bounds how long one message's handlers (however many calls) hold the loop.

The limit counts the CPU time the main thread spends in user code, not wall time: a PU under a CPU quota (a cgroup,
a Kubernetes CPU limit) is paused for most of each period when it is busy, and a wall-clock limit then stopped
well-behaved handlers (measured: every call of a 1-PU grid at 0.1 core failed that way once a client pipelined
more requests). Code that blocks without using CPU (a sleep, a lock) is stopped at WALL_LIMITS x the limit of wall
time instead."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from types import FrameType, TracebackType

from spacegrid.errors import HandlerTimeout, Overloaded

WATCH_SLICES = 4  # the watchdog looks this many times per limit: a timeout fires within 1.25x the limit
WALL_LIMITS = 10  # user code that does not use CPU (it blocks) is stopped after this many limits of wall time


class TimeLimit:
    """`with limit(): user_code()`. A call may run `limit_s`; all calls of one event-loop tick together
    `limit_s` too (a call that would start with the tick's budget spent is refused at once, Overloaded: retried).
    Costs two clock reads
    per call, nothing per bytecode. Main thread only."""

    def __init__(self, limit_s: float) -> None:
        assert limit_s > 0
        assert threading.current_thread() is threading.main_thread(), "signals reach the main thread only"
        self.limit_s = limit_s
        self._cpu_clock = time.pthread_getcpuclockid(threading.get_ident())  # this (the main) thread's CPU time
        self.started_s = 0.0  # CPU time when the running user code started; 0.0: none is running
        self.deadline_s = 0.0  # CPU time at which the running code is stopped: its call's limit or the tick's budget
        self.wall_deadline_s = 0.0  # monotonic time at which it is stopped anyway (code that blocks)
        self.fired_for_s = -1.0
        self.tick_spent_s = 0.0  # user code's CPU time in the current event-loop tick
        self.tick_open = False
        self.by_tick_budget = False  # the running code's deadline is what is left of the tick's budget
        self._main_thread_id = threading.get_ident()
        signal.signal(signal.SIGALRM, self._on_alarm)
        threading.Thread(target=self._watch, name="spacegrid-timelimit", daemon=True).start()

    def __call__(self) -> TimeLimit:
        return self

    def __enter__(self) -> None:
        assert self.started_s == 0.0, "user code does not nest"
        now_s = self.cpu_s()
        if not self.tick_open:
            self._open_tick()
        remaining_s = self.limit_s - self.tick_spent_s
        if remaining_s <= 0:
            # Not run, nothing applied: Overloaded (the client retries after a back-off), not the caller's fault; a
            # PU starved of CPU spends the budget on well-behaved handlers too
            raise Overloaded(f"not run: the handlers of this message already ran {self.tick_spent_s:.2f} s, the "
                             f"budget per event-loop tick (limits.handler_time_limit_s = {self.limit_s} s); retry it")
        self.by_tick_budget = remaining_s < self.limit_s  # stopped at the deadline: the message's budget, not its own
        self.deadline_s = now_s + min(self.limit_s, remaining_s)
        self.wall_deadline_s = time.monotonic() + WALL_LIMITS * self.limit_s
        self.started_s = max(now_s, 1e-9)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.started_s:
            self.tick_spent_s += self.cpu_s() - self.started_s
        self.started_s = 0.0

    def cpu_s(self) -> float:
        """The main thread's CPU time (readable from the watchdog thread too)."""
        return time.clock_gettime(self._cpu_clock)

    def _open_tick(self) -> None:
        """The budget starts with the first user code of a tick and ends when the loop next gets control."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): every call is its own tick
            self.tick_spent_s = 0.0
            return
        self.tick_open = True
        self.tick_spent_s = 0.0
        loop.call_soon(self._close_tick)

    def _close_tick(self) -> None:
        self.tick_open = False

    def _watch(self) -> None:
        while True:
            time.sleep(self.limit_s / WATCH_SLICES)
            started_s = self.started_s
            if started_s and self.fired_for_s != started_s and (
                    self.cpu_s() > self.deadline_s or time.monotonic() > self.wall_deadline_s):
                self.fired_for_s = started_s
                signal.pthread_kill(self._main_thread_id, signal.SIGALRM)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        started_s = self.started_s
        if started_s and started_s == self.fired_for_s:
            spent_s = self.cpu_s() - started_s
            self.tick_spent_s += spent_s
            self.started_s = 0.0
            if self.by_tick_budget and spent_s < self.limit_s and time.monotonic() <= self.wall_deadline_s:
                # Stopped by what earlier calls of the message left, not by its own cost: its writes are discarded
                # as for a timeout, but retrying it is safe and it is not the caller's fault (as for a refusal)
                raise Overloaded(f"stopped after {spent_s:.2f} s: the handlers of this message used up the budget "
                                 f"per event-loop tick (limits.handler_time_limit_s = {self.limit_s} s); nothing was "
                                 "applied; retry it")
            raise HandlerTimeout(f"handler ran past its limit of {self.limit_s}s of CPU time (limits."
                                 f"handler_time_limit_s, per call and per message; {WALL_LIMITS}x that blocked); its "
                                 "writes were discarded")
