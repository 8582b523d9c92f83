"""Named chaos seeds that must keep passing: when a run fails, add its config here under a name saying what it hit."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from spacegrid.chaos.run import ChaosConfig, run_chaos

# id: "seed-<seed>-<faults>"; keep each run short (CI runs them all), long enough to reach the faulty moment
REGRESSIONS = [
    pytest.param(ChaosConfig(pus=3, workers=4, duration_s=10, seed=1, faults=("pu-kill",)), id="seed-1-pu-kill"),
]


@pytest.mark.chaos
@pytest.mark.parametrize("config", REGRESSIONS)
def test_named_seed_passes(config: ChaosConfig, tmp_path: Path) -> None:
    """Each named regression seed's chaos run passes every history check, with at least one fault injected and
    some operations acknowledged."""
    report = run_chaos(replace(config, data_dir=tmp_path))
    assert report.passed, report.describe_failures()
    assert report.faults and report.ok_ops > 0
