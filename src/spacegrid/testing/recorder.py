"""Recording a test's own calls as a history (`with history.incr(key, 5) as op: op.returned(call())`), then checking it."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from spacegrid.errors import SpacegridError
from spacegrid.testing.checker import CheckResult, check_all
from spacegrid.testing.history import HistoryWriter, Kind, Op, Outcome, Pending, load_history, outcome_of

CHECK_TIME_LIMIT_S = 10.0  # per key: the register search gives up (verdict unknown, a failed check) after this


class HistoryViolation(AssertionError):
    """A history check failed (or gave up): the message lists each failed check with a counter-example."""

    def __init__(self, failed: list[CheckResult], path: Path) -> None:
        """Keep the failed checks (`.failed`) for tests that look at them."""
        self.failed = failed
        lines = [result.describe() for result in failed]
        super().__init__(f"{len(failed)} history check(s) failed (history in {path}):\n" + "\n".join(lines))


class Recording:
    """One operation being recorded: a context manager around the call; `returned(result)` once the call returned."""

    def __init__(self, history: History, handle: Pending) -> None:
        """Opened by the History's read/write/cas/incr."""
        self._history = history
        self._handle = handle
        self.outcome: Outcome | None = None  # once the block is over: ok, fail (not applied) or info (unknown)
        self.error: SpacegridError | None = None  # the error the block swallowed, if any

    def returned(self, result: Any) -> Any:
        """Record what the call returned (the value read, True/False for a cas, the counter after an incr) and
        return it unchanged."""
        if self.outcome is not None:
            raise RuntimeError(f"{self._handle.kind} {self._handle.key}: returned() called twice")
        kind, history = self._handle.kind, self._history
        if kind == "read":
            self.outcome = history._complete(self._handle, "ok", value=result)
        elif kind == "cas":
            self.outcome = history._complete(self._handle, "ok" if result is True else "fail")
        elif kind == "incr":
            if not isinstance(result, int) or isinstance(result, bool):
                raise TypeError(f"an incr must return the counter's new value (an int), not {result!r}")
            self.outcome = history._complete(self._handle, "ok", result=result)
        else:
            self.outcome = history._complete(self._handle, "ok")
        return result

    def __enter__(self) -> Recording:
        """The handle to call `returned` on."""
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        """Record a SpacegridError as fail (surely not applied) or info (maybe applied) and swallow it; any other
        exception leaves the operation open (info: maybe applied) and propagates."""
        if exc is None:
            if self.outcome is None:
                raise RuntimeError(f"{self._handle.kind} {self._handle.key}: the block ended without returned(...)")
            return False
        if self.outcome is not None or not isinstance(exc, SpacegridError):
            return False
        self.error = exc
        self.outcome = self._history._complete(self._handle, outcome_of(exc))
        return True


class History:
    """A test's operations, one JSON line each (flushed) in `path`; thread-safe. `check()` runs spacegrid's
    history checkers: per-key linearizability of registers, exact counters, no acknowledged write lost."""

    def __init__(self, path: str | os.PathLike[str], process: str = "test") -> None:
        """Append to `path` (made if missing); `process` names this recorder in the reports."""
        self.path = Path(path)
        self._writer = HistoryWriter(self.path, process)
        self._lock = threading.Lock()

    def read(self, key: str) -> Recording:
        """Record a read of `key` (a register, or a counter's value): returned(value read, None if absent)."""
        return self._invoke(key, "read")

    def write(self, key: str, value: Any) -> Recording:
        """Record a write of `value` to `key`: returned(anything, e.g. the version)."""
        return self._invoke(key, "write", value)

    def cas(self, key: str, expected: Any, new: Any) -> Recording:
        """Record a compare-and-set of `key` from `expected` to `new`: returned(True if it was applied)."""
        return self._invoke(key, "cas", new, expected)

    def incr(self, key: str, amount: int = 1) -> Recording:
        """Record adding `amount` (> 0) to the counter `key`: returned(the counter's value after it)."""
        return self._invoke(key, "incr", amount)

    def ops(self) -> list[Op]:
        """Every operation recorded so far, by invocation time; those still open are info (maybe applied)."""
        with self._lock:
            return load_history([self.path])

    def check(self, final_values: dict[str, Any] | None = None, final_counters: dict[str, int] | None = None,
              time_limit_s: float = CHECK_TIME_LIMIT_S) -> list[CheckResult]:
        """Check every key: registers are linearizable (and, for keys in `final_values`, end on a write that could
        be the last: no acknowledged write lost); counters (keys with incr ops, their final values in
        `final_counters`) are exact. Returns the passed checks; HistoryViolation if any failed or gave up."""
        results = check_all(self.ops(), final_values or {}, final_counters or {}, time_limit_s)
        failed = [result for result in results if result.ok is not True]
        if failed:
            raise HistoryViolation(failed, self.path)
        return results

    def close(self) -> None:
        """Close the file; the history stays readable with `ops()` and `check()`."""
        with self._lock:
            self._writer.close()

    def _invoke(self, key: str, kind: Kind, value: Any = None, expected: Any = None) -> Recording:
        with self._lock:
            return Recording(self, self._writer.invoke(key, kind, value, expected))

    def _complete(self, handle: Pending, outcome: Outcome, **fields: Any) -> Outcome:
        with self._lock:
            self._writer.complete(handle, outcome, **fields)
        return outcome
