"""The client's one retry policy. What follows a failed attempt is decided by the error's class alone:

    NotApplied       send again after a back-off (nothing was applied)
    OutcomeUnknown   send again after a back-off, with the same operation id (a call keeps one id for all its
                     attempts and the owner remembers it, so a write applies at most once)
    anything else    raise it (CallerError: the same request fails the same way; others say nothing to retry on)

The back-off doubles from limits.retry_backoff_s_min to limits.retry_backoff_s_max, and no attempt outlives the
call's deadline (none is sent when the back-off would reach it: it could only time out). When the deadline passes, the call ends with GridTimeout (OutcomeUnknown) if some attempt may
have been applied, and otherwise with its last NotApplied error, saying so. Pure: no asyncio, no clock; the
caller passes the time in and does the waiting."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from spacegrid.errors import GridTimeout, NotApplied, OutcomeUnknown, SpacegridError
from spacegrid.limits import Limits


class Action(enum.Enum):
    RETRY = "retry"  # not applied: send again
    RETRY_SAME_OP = "retry with the same operation id"  # maybe applied: only the same operation id is safe
    RAISE = "raise"


def action_for(error: BaseException) -> Action:
    """What the client does after an attempt failed with `error`."""
    if isinstance(error, NotApplied):
        return Action.RETRY
    if isinstance(error, OutcomeUnknown):
        return Action.RETRY_SAME_OP
    return Action.RAISE


@dataclass(slots=True)
class CallRetries:
    """One call's attempts against its deadline (monotonic seconds). `start`, then per attempt
    `attempt_timeout_s(now)`, and after each failure `after_failure(error, now)`: the wait before the next
    attempt, or the error that ends the call, raised."""

    deadline_s: float
    attempt_timeout_s_max: float
    backoff_s: float
    backoff_s_max: float
    what: str = "the call"
    attempts: int = 0
    maybe_applied: bool = False

    @classmethod
    def start(cls, limits: Limits, now_s: float, timeout_s: float | None = None, what: str = "the call") -> CallRetries:
        """From now, with `timeout_s` (default limits.call_deadline_s) until the deadline."""
        timeout_s = limits.call_deadline_s if timeout_s is None else timeout_s
        assert limits.retry_backoff_s_min > 0 and limits.retry_backoff_s_min <= limits.retry_backoff_s_max
        return cls(now_s + timeout_s, limits.attempt_timeout_s, limits.retry_backoff_s_min,
                   limits.retry_backoff_s_max, what)

    @staticmethod
    def first_attempt_timeout_s(limits: Limits, timeout_s: float | None = None) -> float:
        """attempt_timeout_s of a call's first attempt, without making its retry state (a client makes that at the
        first failure: most calls are answered at the first attempt)."""
        return min(limits.attempt_timeout_s, max(limits.call_deadline_s if timeout_s is None else timeout_s, 0.001))

    def attempt_timeout_s(self, now_s: float) -> float:
        """How long the next attempt may wait for its reply: the attempt timeout, cut to what is left."""
        return min(self.attempt_timeout_s_max, max(self.deadline_s - now_s, 0.001))

    def after_failure(self, error: SpacegridError, now_s: float) -> float:
        """Count a failed attempt; the seconds to wait before the next one, or raise what ends the call."""
        self.attempts += 1
        action = action_for(error)
        if action is Action.RAISE:
            raise error
        if action is Action.RETRY_SAME_OP:
            self.maybe_applied = True
        remaining_s = self.deadline_s - now_s
        if remaining_s <= self.backoff_s:  # the wait would end at the deadline: no attempt could be answered
            raise self._deadline_error(error)
        delay_s = self.backoff_s
        self.backoff_s = min(self.backoff_s * 2, self.backoff_s_max)
        return delay_s

    def _deadline_error(self, last: SpacegridError) -> SpacegridError:
        said = f"{self.what}: no answer within the deadline after {self.attempts} attempts; last: {last}"
        if self.maybe_applied:
            error: SpacegridError = GridTimeout(f"{said}; an attempt may have been applied")
        else:
            assert isinstance(last, NotApplied)
            error = type(last)(f"{said}; none was applied")
        error.__cause__ = last
        return error
