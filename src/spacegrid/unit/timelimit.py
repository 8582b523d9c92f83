"""A wall-clock limit on handler and query code, by SIGALRM; only for the main thread of a PU process."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from types import FrameType
from typing import Iterator

from spacegrid.errors import HandlerTimeout


class AlarmTimeLimit:
    """Raises HandlerTimeout inside user code that runs past limit_s. Armed only around that code."""

    def __init__(self, limit_s: float) -> None:
        assert limit_s > 0
        self.limit_s = limit_s
        self.armed = False
        signal.signal(signal.SIGALRM, self._on_alarm)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self.armed:
            self.armed = False
            raise HandlerTimeout(f"handler ran past its limit of {self.limit_s}s (limits.handler_time_limit_s); its writes were discarded")

    @contextmanager
    def __call__(self) -> Iterator[None]:
        assert not self.armed, "user code does not nest"
        self.armed = True
        signal.setitimer(signal.ITIMER_REAL, self.limit_s)
        try:
            yield
        finally:
            self.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
