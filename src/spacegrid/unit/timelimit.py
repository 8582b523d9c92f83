"""A wall-clock limit on handler and query code: a watchdog thread signals the PU's main thread (SIGALRM) when user
code runs past the limit, and the signal handler raises HandlerTimeout inside that code."""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType, TracebackType

from spacegrid.errors import HandlerTimeout

WATCH_SLICES = 4  # the watchdog looks this many times per limit: a timeout fires within 1.25x the limit


class TimeLimit:
    """`with limit(): user_code()`. Costs one clock read on entry, nothing per bytecode. Main thread only."""

    def __init__(self, limit_s: float) -> None:
        assert limit_s > 0
        assert threading.current_thread() is threading.main_thread(), "signals reach the main thread only"
        self.limit_s = limit_s
        self.started_s = 0.0  # 0.0: no user code running
        self.fired_for_s = -1.0
        self._main_thread_id = threading.get_ident()
        signal.signal(signal.SIGALRM, self._on_alarm)
        threading.Thread(target=self._watch, name="spacegrid-timelimit", daemon=True).start()

    def __call__(self) -> TimeLimit:
        return self

    def __enter__(self) -> None:
        assert self.started_s == 0.0, "user code does not nest"
        self.started_s = time.monotonic()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.started_s = 0.0

    def _watch(self) -> None:
        while True:
            time.sleep(self.limit_s / WATCH_SLICES)
            started_s = self.started_s
            if started_s and time.monotonic() - started_s > self.limit_s and self.fired_for_s != started_s:
                self.fired_for_s = started_s
                signal.pthread_kill(self._main_thread_id, signal.SIGALRM)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        started_s = self.started_s
        if started_s and started_s == self.fired_for_s:
            self.started_s = 0.0
            raise HandlerTimeout(f"handler ran past its limit of {self.limit_s}s (limits.handler_time_limit_s); "
                                 "its writes were discarded")
