"""Failed recoveries back off (no retry storm of claims); a poisoned log message stops its partition until the
operator's repair (core.recovery, no network)."""

from __future__ import annotations

from spacegrid.core.recovery import RecoveryBackoff


def test_ordinary_failures_back_off_doubling_up_to_the_maximum() -> None:
    """Each failure in a row doubles the wait from the minimum to the maximum; success forgets them."""
    backoff = RecoveryBackoff(0.25, 2.0, 60.0)
    waits = [backoff.failed(3, 100.0, "timeout").retry_at_s - 100.0 for _ in range(6)]
    assert waits == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert not backoff.may_try(3, 101.0) and backoff.may_try(3, 102.0) and backoff.may_try(4, 0.0)
    backoff.succeeded(3)
    assert backoff.may_try(3, 100.0) and backoff.report() == {}


def test_a_poisoned_partition_waits_long_is_reported_and_is_tried_at_once_after_repair() -> None:
    """A poisoned message: tried again only after poisoned_retry_s, reported with its sequence and subject; a
    repair makes it eligible at once."""
    backoff = RecoveryBackoff(0.25, 2.0, 60.0)
    backoff.failed(7, 10.0, "bad bytes", poisoned_seq=42, poisoned_subject="sg.s.log.pu.x")
    backoff.failed(8, 10.0, "timeout")
    assert not backoff.may_try(7, 69.0) and backoff.may_try(7, 70.0)
    assert backoff.report() == {"7": {"seq": 42, "subject": "sg.s.log.pu.x", "reason": "bad bytes", "attempts": 1}}
    assert backoff.repaired() == [7] and backoff.may_try(7, 11.0)
    assert not backoff.may_try(8, 10.1), "a repair does not hurry ordinary failures"
