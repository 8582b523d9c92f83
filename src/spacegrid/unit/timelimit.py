"""A limit on handler and query code, per call and per event-loop tick: a watchdog thread signals the PU's main
thread (SIGALRM) when user code runs past its deadline, and the signal handler raises HandlerTimeout inside that
code. The tick's budget bounds how long the handler calls of one pass of the event loop (however many calls and
messages, the code between them included) hold the loop.

The limit counts the main thread's CPU time, not wall time: a PU under a CPU quota (a cgroup,
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

WATCH_SLICES = 8  # the watchdog looks this many times per limit: a timeout fires within 1.25x the limit
WALL_LIMITS = 10  # user code that does not use CPU (it blocks) is stopped after this many limits of wall time


class TimeLimit:
    """`with limit(): user_code()`. A call may use `limit_s` of CPU; a tick (the event loop's pass that runs it,
    from its first call on, the code between the calls included) may use `limit_s` too: a call that would start
    with the tick's budget spent is refused at once, and one stopped by the tick's budget before its own limit is
    stopped with Overloaded (nothing applied; the client retries after a back-off).
    A call costs two monotonic clock reads (wall time bounds CPU time from above: the thread's CPU clock, a system
    call, is read only when the wall time says the budget may be spent, and once per tick); the watchdog thread
    reads the main thread's CPU clock. Main thread only."""

    def __init__(self, limit_s: float) -> None:
        assert limit_s > 0
        assert threading.current_thread() is threading.main_thread(), "signals reach the main thread only"
        self.limit_s = limit_s
        self._cpu_clock = time.pthread_getcpuclockid(threading.get_ident())  # this (the main) thread's CPU time
        self.running = 0  # a number per call while user code runs (set last on entry, cleared first on exit); 0: none
        self.started_s = 0.0  # monotonic time the running call started
        self.tick_open = False
        self.tick_started_s = 0.0  # monotonic time of the tick's first call
        self.tick_cpu_s = 0.0  # the main thread's CPU time then
        self.tick_first_call = 0  # the tick's first call: the tick's CPU time is that call's own
        self.fired_for = 0  # the call the watchdog signalled
        self.fired_by_tick = False  # ... because the tick's budget ran out before the call's own limit
        self._calls = 0
        self._main_thread_id = threading.get_ident()
        signal.signal(signal.SIGALRM, self._on_alarm)
        threading.Thread(target=self._watch, name="spacegrid-timelimit", daemon=True).start()

    def __call__(self) -> TimeLimit:
        return self

    def __enter__(self) -> None:
        assert self.running == 0, "user code does not nest"
        now_s = time.monotonic()
        if not self.tick_open:
            self._open_tick(now_s)
            self.tick_first_call = self._calls + 1
        elif now_s - self.tick_started_s >= self.limit_s and (spent_s := self.tick_spent_s()) >= self.limit_s:
            # Not run, nothing applied: Overloaded (the client retries after a back-off), not the caller's fault; a
            # PU starved of CPU spends the budget on well-behaved handlers too
            raise Overloaded(f"not run: this event-loop tick already used {spent_s:.2f} s of CPU in handlers, its "
                             f"budget (limits.handler_time_limit_s = {self.limit_s} s); retry it")
        self.started_s = now_s
        self._calls += 1
        self.running = self._calls

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.running = 0

    def cpu_s(self) -> float:
        """The main thread's CPU time (readable from the watchdog thread too)."""
        return time.clock_gettime(self._cpu_clock)

    def tick_spent_s(self) -> float:
        return self.cpu_s() - self.tick_cpu_s

    def _open_tick(self, now_s: float) -> None:
        """The budget starts with the first user code of a tick and ends when the loop next gets control."""
        self.tick_started_s, self.tick_cpu_s = now_s, self.cpu_s()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): every call is its own tick
            return
        self.tick_open = True
        loop.call_soon(self._close_tick)

    def _close_tick(self) -> None:
        self.tick_open = False

    def _watch(self) -> None:
        """Every slice: the CPU the running call used since the watchdog first saw it (a lower bound: it may have
        started up to a slice before), and the tick's; signal the main thread when either passes the limit, or the
        call's wall time passes the backstop."""
        seen, seen_cpu_s = 0, 0.0
        while True:
            time.sleep(self.limit_s / WATCH_SLICES)
            call = self.running
            if not call or call == self.fired_for:
                continue
            cpu_s = self.cpu_s()
            if call != seen:
                seen, seen_cpu_s = call, cpu_s
            over_tick = cpu_s - self.tick_cpu_s >= self.limit_s
            over_call = cpu_s - seen_cpu_s >= self.limit_s or (over_tick and call == self.tick_first_call) \
                or time.monotonic() - self.started_s > WALL_LIMITS * self.limit_s
            if (over_call or over_tick) and self.running == call:
                self.fired_by_tick = not over_call
                self.fired_for = call
                signal.pthread_kill(self._main_thread_id, signal.SIGALRM)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        call = self.running
        if call and call == self.fired_for:
            self.running = 0
            if self.fired_by_tick:
                # Stopped by what earlier code of the tick used, not by its own cost: its writes are discarded as
                # for a timeout, but retrying it is safe and it is not the caller's fault (as for a refusal)
                raise Overloaded("stopped: this event-loop tick used up its budget of CPU for handlers "
                                 f"(limits.handler_time_limit_s = {self.limit_s} s) before this call reached its own "
                                 "limit; nothing was applied; retry it")
            raise HandlerTimeout(f"handler ran past its limit of {self.limit_s}s of CPU time (limits."
                                 f"handler_time_limit_s, per call and per message; {WALL_LIMITS}x that blocked); its "
                                 "writes were discarded")
