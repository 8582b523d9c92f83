"""Failed recoveries of a PU's partitions: when each may be tried again (backing off, so a failing partition never
makes a retry storm of claims), and which are stopped by a poisoned log message, reported until an operator
repairs the log (`spacegrid repair`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Failure:
    """A partition's recovery failed `count` times in a row; not tried again before `retry_at_s`."""

    count: int
    retry_at_s: float
    reason: str
    poisoned_seq: int | None = None  # the log message that can't be applied, if that is why
    poisoned_subject: str = ""


class RecoveryBackoff:
    """Per partition: failed(now) after a failed recovery, may_try(now) before acquiring, succeeded() once it
    serves. Ordinary failures back off from `retry_s_min` doubling to `retry_s_max`; a poisoned log message waits
    `poisoned_retry_s` between attempts (the operator's repair is what makes the next one succeed)."""

    def __init__(self, retry_s_min: float, retry_s_max: float, poisoned_retry_s: float) -> None:
        assert 0 < retry_s_min <= retry_s_max <= poisoned_retry_s
        self.retry_s_min = retry_s_min
        self.retry_s_max = retry_s_max
        self.poisoned_retry_s = poisoned_retry_s
        self.failures: dict[int, Failure] = {}

    def failed(self, partition: int, now_s: float, reason: str, poisoned_seq: int | None = None,
               poisoned_subject: str = "") -> Failure:
        previous = self.failures.get(partition)
        count = 1 if previous is None else previous.count + 1
        if poisoned_seq is not None:
            delay_s = self.poisoned_retry_s
        else:
            delay_s = min(self.retry_s_max, self.retry_s_min * 2 ** min(count - 1, 30))
        failure = Failure(count, now_s + delay_s, reason, poisoned_seq, poisoned_subject)
        self.failures[partition] = failure
        return failure

    def may_try(self, partition: int, now_s: float) -> bool:
        failure = self.failures.get(partition)
        return failure is None or now_s >= failure.retry_at_s

    def repaired(self) -> list[int]:
        """An operator repaired the log: the poisoned partitions may be tried at once. Returns them."""
        poisoned = sorted(self.poisoned())
        for partition in poisoned:
            self.failures[partition].retry_at_s = 0.0
        return poisoned

    def succeeded(self, partition: int) -> None:
        self.failures.pop(partition, None)

    def poisoned(self) -> dict[int, Failure]:
        return {p: f for p, f in self.failures.items() if f.poisoned_seq is not None}

    def report(self) -> dict[str, dict[str, Any]]:
        """For the PU's member record and `spacegrid status` / `spacegrid repair`: the stopped partitions."""
        return {str(p): {"seq": f.poisoned_seq, "subject": f.poisoned_subject, "reason": f.reason,
                         "attempts": f.count} for p, f in sorted(self.poisoned().items())}
