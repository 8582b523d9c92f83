"""A PU's liveness and readiness, as Kubernetes probes (or any load balancer) ask for them, from its own state."""

from __future__ import annotations

from dataclasses import dataclass

STALL_HEARTBEATS = 4  # live while the PU's event loop took a statistics snapshot within this many heartbeat timeouts


@dataclass(frozen=True, slots=True)
class Health:
    live: bool
    ready: bool
    why: str


def health(snapshot_age_s: float | None, heartbeat_timeout_s: float, registered: bool, lease_valid: bool,
           leaving: bool, recovering: int, log_missing: bool) -> Health:
    """Live: the PU's event loop is turning (it snapshots its statistics with every heartbeat round); a PU whose loop
    is stuck past STALL_HEARTBEATS heartbeat timeouts should be restarted. Ready: live, a member of the grid with a
    valid read lease, not leaving, no partition of its own still recovering, and the log there (it takes writes)."""
    if snapshot_age_s is None:
        return Health(True, False, "starting: not a member yet")
    if snapshot_age_s > STALL_HEARTBEATS * heartbeat_timeout_s:
        return Health(False, False, f"the event loop has not turned for {snapshot_age_s:.1f} s")
    reasons = [why for failing, why in ((not registered, "not a member of the grid (joining)"),
                                        (not lease_valid, "its read lease lapsed"),
                                        (leaving, "leaving: handing its partitions off"),
                                        (recovering > 0, f"{recovering} partitions recovering"),
                                        (log_missing, "the log stream is missing")) if failing]
    return Health(True, not reasons, "; ".join(reasons) or "serving")
