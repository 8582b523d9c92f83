"""Chaos runs with fixed seeds: worker processes record histories under PU and NATS faults; the checker finds nothing."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest

from spacegrid.chaos.faults import FAULT_KINDS, HOLD_S, NATS_KINDS, NET_KINDS, PU_KINDS, available_kinds, plan
from spacegrid.chaos.netns import NetNamespace, netns_usable
from spacegrid.chaos.report import ChaosReport, all_keys_ok_after, first_ok_after
from spacegrid.chaos.run import ChaosConfig, run_chaos
from spacegrid.chaos.worker import outcome_of
from spacegrid.errors import ConfigError, GridTimeout, HandlerError, NotOwner
from spacegrid.testing.history import Op


def assert_clean(report: ChaosReport, kinds: tuple[str, ...], ok_min: int) -> None:
    """No violation, no unknown verdict, enough ok operations, and faults of the expected kinds injected."""
    assert report.passed, report.describe_failures()
    assert report.ok_ops > ok_min, report.op_counts
    assert report.faults and {record.kind for record in report.faults} <= set(kinds)
    assert all(record.end_s is not None for record in report.faults), [r.note for r in report.faults]


@pytest.mark.chaos
def test_pu_kill_and_pause_on_a_single_node(tmp_path: Path) -> None:
    """3 PUs on one NATS node, SIGKILLed (and replaced) or SIGSTOPped for 1-4 s: every key stays linearizable."""
    kinds = ("pu-kill", "pu-pause")
    report = run_chaos(ChaosConfig(pus=3, workers=4, duration_s=18, seed=6, faults=kinds, data_dir=tmp_path))
    assert_clean(report, kinds, ok_min=600)
    assert {record.kind for record in report.faults} == set(kinds), [r.kind for r in report.faults]


@pytest.mark.chaos
def test_nats_node_kill_on_a_cluster(tmp_path: Path) -> None:
    """A 3-node NATS cluster losing one node at a time (SIGKILL, restart after 2-5 s): histories stay linearizable."""
    kinds = ("nats-kill",)
    report = run_chaos(ChaosConfig(pus=3, workers=4, duration_s=20, seed=12, faults=kinds, nats_cluster=3,
                                   data_dir=tmp_path))
    assert_clean(report, kinds, ok_min=500)


@pytest.mark.chaos
@pytest.mark.skipif(netns_usable() is not None, reason=str(netns_usable()))
def test_network_cut_between_a_pu_and_nats(tmp_path: Path) -> None:
    """One PU lives in a network namespace; its link to NATS is cut for 1-5 s at a time (shorter or longer than the
    heartbeat timeout): it can acknowledge nothing while cut, histories stay linearizable, the store equals the grid,
    and the namespace and its veth pair are gone afterwards."""
    kinds = ("pu-netcut",)
    report = run_chaos(ChaosConfig(pus=3, workers=4, duration_s=30, seed=5, faults=kinds, data_dir=tmp_path))
    assert_clean(report, kinds, ok_min=600)
    assert len(report.faults) >= 2
    assert all(recovery["first_ok_after_heal_s"] is not None for recovery in report.recovery), report.recovery
    assert any(result.kind == "store" for result in report.results)
    leftover = NetNamespace.for_this_process()
    assert not leftover.exists(), f"{leftover.name} was not deleted"


@pytest.mark.chaos
@pytest.mark.long
@pytest.mark.timeout(1500)
def test_long_run_with_every_fault_kind(tmp_path: Path) -> None:
    """300 s on a 3-node cluster with PU kills and pauses and NATS node kills and pauses."""
    report = run_chaos(ChaosConfig(pus=3, workers=4, duration_s=300, seed=300, faults=FAULT_KINDS, nats_cluster=3,
                                   data_dir=tmp_path))
    assert_clean(report, FAULT_KINDS, ok_min=10_000)


# --- the harness's pure parts -----------------------------------------------------------------------------------


def test_a_seed_gives_one_schedule_of_faults_one_at_a_time_healed_before_the_tail() -> None:
    """A seed fixes the fault schedule (the same seed gives the same one, another seed a different one): every
    kind appears, faults never overlap, each hold lies within its kind's bounds, and every fault is healed
    before the fault-free tail."""
    schedule = plan(7, FAULT_KINDS, 120, tail_s=5)
    assert schedule == plan(7, FAULT_KINDS, 120, tail_s=5) != plan(8, FAULT_KINDS, 120, tail_s=5)
    assert {fault.kind for fault in schedule} == set(FAULT_KINDS)
    for fault, following in pairwise(schedule):
        assert fault.at_s + fault.hold_s < following.at_s
    for fault in schedule:
        low, high = HOLD_S[fault.kind]
        assert low <= fault.hold_s <= high and fault.at_s + fault.hold_s + 5 <= 120 and 0 <= fault.target < 1


def test_nats_faults_need_a_cluster() -> None:
    """NATS faults are offered only with a 3-node NATS cluster (network cuts only where namespaces can be
    created); asking for them without one, or for an unknown kind, is a ConfigError."""
    net = NET_KINDS if netns_usable() is None else ()
    assert available_kinds(0) == PU_KINDS + net and available_kinds(3) == PU_KINDS + NATS_KINDS + net
    assert ChaosConfig(nats_cluster=3).kinds() == available_kinds(3)
    with pytest.raises(ConfigError, match="3-node"):
        ChaosConfig(faults=("nats-kill",)).kinds()
    with pytest.raises(ConfigError, match="fault kinds are"):
        ChaosConfig(faults=("pu-explode",)).kinds()


def test_outcomes_fail_only_when_not_applied_for_sure() -> None:
    """A call's outcome is recorded as failed only for errors that guarantee nothing was applied (NotOwner,
    HandlerError); a timeout or a lost connection is indeterminate (info)."""
    assert outcome_of(GridTimeout("deadline")) == "info"
    assert outcome_of(RuntimeError("connection lost")) == "info"
    assert outcome_of(NotOwner("retryable: not applied")) == "fail"
    assert outcome_of(HandlerError("writes discarded")) == "fail"


def test_recovery_is_measured_to_the_first_ok_op_and_to_the_slowest_key() -> None:
    """Recovery after a fault is measured to the first successful operation invoked after it, and to the time by
    which every key has had one; None when no operation, or none on some key, was invoked after it."""
    ops = [
        Op("p", "a", "write", 1, 0.0, 1.0, "ok"),
        Op("p", "a", "write", 2, 10.0, 10.5, "ok"),
        Op("p", "b", "write", 3, 10.1, 14.0, "info"),
        Op("p", "b", "write", 4, 12.0, 13.0, "ok"),
    ]
    assert first_ok_after(ops, 10.0) == pytest.approx(0.5)
    assert all_keys_ok_after(ops, 10.0) == pytest.approx(3.0)
    assert all_keys_ok_after(ops, 12.5) is None  # nothing invoked after it
    assert all_keys_ok_after(ops[:3], 10.0) is None  # key b never had an ok op invoked after 10.0
