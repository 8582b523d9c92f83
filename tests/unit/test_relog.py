"""When `spacegrid repair --recreate-log` may recreate a deleted log, from which sequence, and what it says is lost."""

from __future__ import annotations

import pytest

from spacegrid.errors import ConfigError
from spacegrid.relog import plan


def pu(missing: bool = True, seq: int = 10, lag: int = 0) -> dict[str, object]:
    return {"log_missing": missing, "log_seq": seq, "write_behind_lag_records": lag, "store": "sqlite:///x"}


def test_ready_when_every_pu_saw_the_log_missing_and_the_store_holds_their_writes() -> None:
    """Every PU reports the log missing and no write the store lacks: ready, from above every position seen."""
    chosen = plan({"a": pu(seq=40), "b": pu(seq=57)}, has_store=True, store_seq=30, accept_data_loss=False)
    assert chosen.ready and chosen.first_seq == 58 and chosen.losses == ()


def test_waits_for_a_pu_that_has_not_seen_it_or_has_writes_to_flush() -> None:
    """A PU not yet aware, or with writes not in the store, is waited for (named with why)."""
    chosen = plan({"a": pu(missing=False), "b": pu(lag=3)}, has_store=True, store_seq=0, accept_data_loss=False)
    assert not chosen.ready
    assert chosen.waiting_for == ("a (has not seen the log missing yet)", "b (3 writes not in the store yet)")


def test_the_store_position_counts_when_it_is_the_highest() -> None:
    """No PU runs: the store's highest position is what the new log must start above (and the loss is accepted)."""
    chosen = plan({}, has_store=True, store_seq=900, accept_data_loss=True)
    assert chosen.ready and chosen.first_seq == 901 and "no PU is running" in chosen.losses[0]


@pytest.mark.parametrize("members, has_store", [({}, True), ({}, False), ({"a": pu()}, False)])
def test_a_loss_is_refused_unless_accepted(members: dict[str, dict[str, object]], has_store: bool) -> None:
    """No PU running, or no store: refused with what is lost and the flag that goes ahead."""
    with pytest.raises(ConfigError, match="--accept-data-loss"):
        plan(members, has_store=has_store, store_seq=0, accept_data_loss=False)
    assert plan(members, has_store=has_store, store_seq=0, accept_data_loss=True).losses
