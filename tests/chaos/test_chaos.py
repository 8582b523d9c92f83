"""Chaos runs with fixed seeds: worker processes record histories under PU and NATS faults; the checker finds nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from spacegrid.chaos.faults import FAULT_KINDS
from spacegrid.chaos.report import ChaosReport
from spacegrid.chaos.run import ChaosConfig, run_chaos

pytestmark = pytest.mark.chaos


def assert_clean(report: ChaosReport, kinds: tuple[str, ...], ok_min: int) -> None:
    """No violation, no unknown verdict, enough ok operations, and faults of the expected kinds injected."""
    assert report.passed, report.describe_failures()
    assert report.ok_ops > ok_min, report.op_counts
    assert report.faults and {record.kind for record in report.faults} <= set(kinds)
    assert all(record.end_s is not None for record in report.faults), [r.note for r in report.faults]


def test_pu_kill_and_pause_on_a_single_node(tmp_path: Path) -> None:
    """3 PUs on one NATS node, SIGKILLed (and replaced) or SIGSTOPped for 1-4 s: every key stays linearizable."""
    kinds = ("pu-kill", "pu-pause")
    report = run_chaos(ChaosConfig(pus=3, workers=4, duration_s=18, seed=6, faults=kinds, data_dir=tmp_path))
    assert_clean(report, kinds, ok_min=600)
    assert {record.kind for record in report.faults} == set(kinds), [r.kind for r in report.faults]


def test_nats_node_kill_on_a_cluster(tmp_path: Path) -> None:
    """A 3-node NATS cluster losing one node at a time (SIGKILL, restart after 2-5 s): histories stay linearizable."""
    kinds = ("nats-kill",)
    report = run_chaos(ChaosConfig(pus=3, workers=4, duration_s=22, seed=12, faults=kinds, nats_cluster=3,
                                   data_dir=tmp_path))
    assert_clean(report, kinds, ok_min=500)


@pytest.mark.long
@pytest.mark.timeout(1500)
def test_long_run_with_every_fault_kind(tmp_path: Path) -> None:
    """300 s on a 3-node cluster with PU kills and pauses and NATS node kills and pauses."""
    report = run_chaos(ChaosConfig(pus=3, workers=4, duration_s=300, seed=300, faults=FAULT_KINDS, nats_cluster=3,
                                   data_dir=tmp_path))
    assert_clean(report, FAULT_KINDS, ok_min=10_000)
