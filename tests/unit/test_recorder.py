"""spacegrid.testing.recorder: recording a test's calls as a history, and checking it, without a grid."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from spacegrid.errors import GridTimeout, NotOwner
from spacegrid.testing import History, HistoryViolation


def test_returned_values_become_ok_ops_and_a_cas_that_did_not_apply_fails(tmp_path: Path) -> None:
    """A write, a read, an applied and a refused cas, and an incr are recorded with what their calls returned:
    ok, with the value read and the counter's total; the refused cas as fail."""
    history = History(tmp_path / "h.jsonl")
    with history.write("k", "a") as op:
        assert op.returned(7) == 7
    with history.read("k") as op:
        op.returned("a")
    with history.cas("k", "a", "b") as op:
        op.returned(True)
    with history.cas("k", "a", "c") as op:
        op.returned(False)
    with history.incr("n", 5) as op:
        op.returned(5)
    ops = history.ops()
    assert [(o.kind, o.outcome) for o in ops] == [("write", "ok"), ("read", "ok"), ("cas", "ok"), ("cas", "fail"),
                                                  ("incr", "ok")]
    assert ops[1].value == "a" and ops[4].result == 5
    assert len(history.check(final_values={"k": "b"}, final_counters={"n": 5})) == 3


def test_spacegrid_errors_are_recorded_and_swallowed_other_errors_propagate(tmp_path: Path) -> None:
    """A NotApplied error is recorded as fail, a timeout as info, both swallowed; any other exception propagates
    and leaves the op open, read back as info."""
    history = History(tmp_path / "h.jsonl")
    with history.write("k", 1) as refused:
        raise NotOwner("not applied")
    with history.write("k", 2) as unknown:
        raise GridTimeout("maybe applied")
    with pytest.raises(ZeroDivisionError):
        with history.write("k", 3):
            _ = 1 / 0
    assert (refused.outcome, unknown.outcome) == ("fail", "info")
    assert isinstance(unknown.error, GridTimeout)
    assert [o.outcome for o in history.ops()] == ["fail", "info", "info"]
    history.check(final_values={"k": 3})  # the open write may have been the last to take effect


def test_recording_works_inside_async_code(tmp_path: Path) -> None:
    """The same `with` records awaited calls, concurrent ones included."""
    history = History(tmp_path / "h.jsonl")

    async def main() -> None:
        all_open = asyncio.Event()
        opened = []

        async def deposit(total: int) -> None:
            with history.incr("n", 1) as op:
                opened.append(total)
                if len(opened) == 3:
                    all_open.set()
                await all_open.wait()  # every deposit is in flight before any returns: concurrent, by construction
                op.returned(total)

        await asyncio.gather(*(deposit(total) for total in (1, 2, 3)))

    asyncio.run(main())
    history.check(final_counters={"n": 3})


def test_a_lost_increment_and_a_phantom_read_are_violations(tmp_path: Path) -> None:
    """check() raises HistoryViolation, an AssertionError naming each failed key with its counter-example, for an
    acknowledged increment missing from the final total and for a read of a value nobody wrote."""
    history = History(tmp_path / "h.jsonl")
    for total in (1, 2):
        with history.incr("n", 1) as op:
            op.returned(total)
    with history.read("k") as op:
        op.returned("never-written")
    with pytest.raises(HistoryViolation) as caught:
        history.check(final_counters={"n": 1})
    assert isinstance(caught.value, AssertionError)
    assert sorted(result.key for result in caught.value.failed) == ["k", "n"]
    assert "under-count" in str(caught.value) and "no write or cas" in str(caught.value)


def test_misuse_is_refused(tmp_path: Path) -> None:
    """A block that ends without returned(), returned() twice and an incr returning no int are programmer errors."""
    history = History(tmp_path / "h.jsonl")
    with pytest.raises(RuntimeError, match="without returned"):
        with history.write("k", 1):
            pass
    with pytest.raises(RuntimeError, match="twice"):
        with history.write("k", 2) as op:
            op.returned(None)
            op.returned(None)
    with pytest.raises(TypeError, match="new value"):
        with history.incr("n") as op:
            op.returned(True)
