"""A PU's liveness and readiness for probes: live while its event loop turns, ready only when it serves."""

from __future__ import annotations

from spacegrid.observability.health import STALL_HEARTBEATS, health

OK = dict(registered=True, lease_valid=True, leaving=False, recovering=0, log_missing=False)


def test_a_serving_pu_is_live_and_ready() -> None:
    """A fresh snapshot, a member with its lease, nothing recovering: 200 on both probes."""
    state = health(0.1, 1.5, **OK)  # type: ignore[arg-type]
    assert state.live and state.ready and state.why == "serving"


def test_a_stuck_loop_is_not_live() -> None:
    """No snapshot for more than STALL_HEARTBEATS heartbeat timeouts: restart it."""
    state = health(STALL_HEARTBEATS * 1.5 + 0.1, 1.5, **OK)  # type: ignore[arg-type]
    assert not state.live and not state.ready and "has not turned" in state.why


def test_not_ready_while_joining_leaving_recovering_or_without_a_log() -> None:
    """Each reason keeps it out of the load balancer, live, with the reasons named."""
    assert health(None, 1.5, **OK).live and not health(None, 1.5, **OK).ready  # type: ignore[arg-type]
    for change, said in ((dict(registered=False), "not a member"), (dict(lease_valid=False), "lease"),
                         (dict(leaving=True), "leaving"), (dict(recovering=3), "3 partitions recovering"),
                         (dict(log_missing=True), "log stream is missing")):
        state = health(0.1, 1.5, **{**OK, **change})  # type: ignore[arg-type]
        assert state.live and not state.ready and said in state.why, (change, state)
