"""A wall-clock limit on handler and query code, per call and per event-loop tick: a watchdog thread signals the
PU's main thread (SIGALRM) when user code runs past its deadline, and the signal handler raises HandlerTimeout
inside that code. The tick's budget bounds how long one message's handlers (however many calls) hold the loop."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from types import FrameType, TracebackType

from spacegrid.errors import HandlerTimeout, Overloaded

WATCH_SLICES = 4  # the watchdog looks this many times per limit: a timeout fires within 1.25x the limit


class TimeLimit:
    """`with limit(): user_code()`. A call may run `limit_s`; all calls of one event-loop tick together
    `limit_s` too (a call that would start with the tick's budget spent is refused at once, Overloaded: retried).
    Costs two clock reads
    per call, nothing per bytecode. Main thread only."""

    def __init__(self, limit_s: float) -> None:
        assert limit_s > 0
        assert threading.current_thread() is threading.main_thread(), "signals reach the main thread only"
        self.limit_s = limit_s
        self.started_s = 0.0  # 0.0: no user code running
        self.deadline_s = 0.0  # when the running code is stopped: its call's limit or the tick's budget
        self.fired_for_s = -1.0
        self.tick_spent_s = 0.0  # user code's time in the current event-loop tick
        self.tick_open = False
        self._main_thread_id = threading.get_ident()
        signal.signal(signal.SIGALRM, self._on_alarm)
        threading.Thread(target=self._watch, name="spacegrid-timelimit", daemon=True).start()

    def __call__(self) -> TimeLimit:
        return self

    def __enter__(self) -> None:
        assert self.started_s == 0.0, "user code does not nest"
        now_s = time.monotonic()
        if not self.tick_open:
            self._open_tick()
        remaining_s = self.limit_s - self.tick_spent_s
        if remaining_s <= 0:
            # Not run, nothing applied: Overloaded (the client retries after a back-off), not the caller's fault; a
            # PU starved of CPU spends the budget on well-behaved handlers too
            raise Overloaded(f"not run: the handlers of this message already ran {self.tick_spent_s:.2f} s, the "
                             f"budget per event-loop tick (limits.handler_time_limit_s = {self.limit_s} s); retry it")
        self.deadline_s = now_s + min(self.limit_s, remaining_s)
        self.started_s = now_s

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.started_s:
            self.tick_spent_s += time.monotonic() - self.started_s
        self.started_s = 0.0

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
            if started_s and time.monotonic() > self.deadline_s and self.fired_for_s != started_s:
                self.fired_for_s = started_s
                signal.pthread_kill(self._main_thread_id, signal.SIGALRM)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        started_s = self.started_s
        if started_s and started_s == self.fired_for_s:
            self.tick_spent_s += time.monotonic() - started_s
            self.started_s = 0.0
            raise HandlerTimeout(f"handler ran past its limit of {self.limit_s}s (limits.handler_time_limit_s, per "
                                 "call and per message); its writes were discarded")
