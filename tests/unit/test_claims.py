"""The claim view's bookkeeping (unit/claims.py), fed claims by hand: who took what, and waiting for a sequence."""

from __future__ import annotations

import asyncio

import pytest

from spacegrid.errors import GridUnavailable
from spacegrid.unit.claims import ClaimView


def view(claimed: list[int]) -> ClaimView:
    return ClaimView(changelog=None, member_id="me", on_claimed=claimed.append)  # type: ignore[arg-type]


def test_only_a_later_claim_by_another_member_takes_a_partition_away():
    """A partition is claimed away only by another member's claim after ours; our own claims and earlier ones do
    not count, and on_claimed reports other members' claims only."""
    claimed: list[int] = []
    claims = view(claimed)
    claims._apply(5, 1, 1, "other")  # before our claim
    claims._apply(7, 1, 2, "me")
    assert not claims.claimed_away(1, claim_seq=7)
    claims._apply(9, 1, 3, "other")
    assert claims.claimed_away(1, claim_seq=7)
    assert not claims.claimed_away(2, claim_seq=0)
    assert claimed == [1, 1] and claims.seen_seq == 9


def test_redelivered_claims_are_ignored():
    """A claim at or below the sequence already seen (an ordered consumer's reset) changes nothing."""
    claimed: list[int] = []
    claims = view(claimed)
    claims._apply(9, 1, 3, "other")
    claims._apply(4, 2, 1, "other")
    assert claims.seen_seq == 9 and 2 not in claims.last and claimed == [1]


def test_waiting_for_a_sequence_ends_when_it_is_seen_or_times_out():
    """wait_seen returns once a claim at that sequence (or later) is applied, and raises GridUnavailable if none
    comes within the timeout."""

    async def scenario() -> None:
        claims = view([])
        asyncio.get_running_loop().call_soon(claims._apply, 4, 0, 1, "other")  # once the wait below registered
        await claims.wait_seen(3, timeout_s=5)
        assert claims.seen_seq == 4
        with pytest.raises(GridUnavailable):
            await claims.wait_seen(10, timeout_s=0.01)

    asyncio.run(scenario())
