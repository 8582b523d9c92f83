"""Unit tests of the client's retry policy (client/retry.py): decisions by class, back-off, deadline; no processes."""

import pytest

from spacegrid import errors
from spacegrid.client.retry import Action, CallRetries, action_for
from spacegrid.limits import Limits

LIMITS = Limits(call_deadline_s=1.0, attempt_timeout_s=0.5, retry_backoff_s_min=0.01, retry_backoff_s_max=0.04)


@pytest.mark.parametrize(("error", "action"), [
    (errors.NotOwner("moved"), Action.RETRY),
    (errors.PartitionUnavailable("no owner"), Action.RETRY),
    (errors.Fenced("deposed"), Action.RETRY),
    (errors.Overloaded("queue full"), Action.RETRY),
    (errors.CommitUnknown("append timed out"), Action.RETRY_SAME_OP),
    (errors.AttemptTimeout("no reply"), Action.RETRY_SAME_OP),
    (errors.RequestError("bad"), Action.RAISE),
    (errors.VersionConflict("stale", 3), Action.RAISE),
    (errors.HandlerError("boom", "ValueError"), Action.RAISE),
    (errors.ClosedError("closed"), Action.RAISE),
    (errors.SpacegridError("unknown code"), Action.RAISE),
    (RuntimeError("not ours"), Action.RAISE),
], ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else value.name)
def test_the_action_follows_from_the_class_alone(error, action):
    """NotApplied retries, OutcomeUnknown retries with the same op id, anything else is raised."""
    assert action_for(error) is action


def test_backoff_doubles_up_to_its_maximum():
    """The waits between attempts go min, 2*min, ... and stay at max."""
    retries = CallRetries.start(LIMITS, now_s=0.0)
    delays = [retries.after_failure(errors.NotOwner("moved"), now_s=0.0) for _ in range(5)]
    assert delays == [0.01, 0.02, 0.04, 0.04, 0.04]
    assert retries.attempts == 5


def test_no_wait_and_no_attempt_outlives_the_deadline():
    """Near the deadline the attempt timeout is cut to what is left of the call; when the back-off would reach the
    deadline the call ends at once with the last error (an attempt sent then could only time out, and would turn
    a call that was never applied into one that may have been)."""
    retries = CallRetries.start(LIMITS, now_s=0.0)
    assert retries.attempt_timeout_s(now_s=0.0) == 0.5
    assert retries.attempt_timeout_s(now_s=0.8) == pytest.approx(0.2)
    for _ in range(3):
        retries.after_failure(errors.NotOwner("moved"), now_s=0.0)  # back-off now at its max, 0.04
    assert retries.after_failure(errors.NotOwner("moved"), now_s=0.95) == pytest.approx(0.04)
    with pytest.raises(errors.NotOwner, match="none was applied"):
        retries.after_failure(errors.NotOwner("moved"), now_s=0.99)


def test_a_caller_error_is_raised_at_once_as_is():
    """A CallerError ends the call on its first failure, unchanged."""
    retries = CallRetries.start(LIMITS, now_s=0.0)
    conflict = errors.VersionConflict("stale", 3)
    with pytest.raises(errors.VersionConflict) as raised:
        retries.after_failure(conflict, now_s=0.0)
    assert raised.value is conflict


def test_deadline_after_only_not_applied_failures_says_none_was_applied():
    """When every attempt was not applied, the call ends with that NotApplied class, saying none was applied."""
    retries = CallRetries.start(LIMITS, now_s=0.0, what="partition 3")
    retries.after_failure(errors.PartitionUnavailable("partition 3 has no member to ask: nothing was sent"), 0.5)
    with pytest.raises(errors.PartitionUnavailable, match="partition 3: .* 2 attempts.*none was applied") as raised:
        retries.after_failure(errors.PartitionUnavailable("partition 3 has no member to ask: nothing was sent"), 1.0)
    assert isinstance(raised.value, errors.NotApplied)
    assert isinstance(raised.value.__cause__, errors.PartitionUnavailable)


def test_deadline_after_an_unknown_outcome_is_a_grid_timeout_even_if_the_last_was_not_applied():
    """One attempt that may have been applied makes the call's end GridTimeout (OutcomeUnknown), whatever came later."""
    retries = CallRetries.start(LIMITS, now_s=0.0)
    retries.after_failure(errors.AttemptTimeout("no reply"), now_s=0.5)
    assert retries.maybe_applied
    with pytest.raises(errors.GridTimeout, match="may have been applied") as raised:
        retries.after_failure(errors.NotOwner("moved"), now_s=1.0)
    assert isinstance(raised.value, errors.OutcomeUnknown)
    assert isinstance(raised.value.__cause__, errors.NotOwner)


def test_a_call_deadline_other_than_the_default():
    """start(timeout_s=...) sets the call's own deadline instead of limits.call_deadline_s."""
    retries = CallRetries.start(LIMITS, now_s=10.0, timeout_s=0.1)
    assert retries.deadline_s == pytest.approx(10.1)
    with pytest.raises(errors.GridTimeout):
        retries.after_failure(errors.CommitUnknown("lost"), now_s=10.1)
