"""Unit tests of reconciliation's comparison of grid and store listings."""

from spacegrid.reconcile import Drift, diff


def test_diff_lists_each_kind_of_drift() -> None:
    """diff reports each key whose versions differ, each key only in the grid and each key only in the store, in
    key order."""
    grid = [("a", 1), ("b", 2), ("c", 3)]
    store = [("a", 1), ("b", 5), ("d", 4)]
    assert diff(grid, store, pending=set(), grid_complete=True) == [
        Drift("b", 2, 5), Drift("c", 3, None), Drift("d", None, 4)]


def test_pending_writes_and_evicted_entries_are_not_drift() -> None:
    """Keys with writes not yet persisted are not drift, nor are keys only in the store when the grid's listing is
    incomplete (they may just be evicted from memory)."""
    grid = [("a", 9)]
    store = [("a", 1), ("b", 2)]
    assert diff(grid, store, pending={"a"}, grid_complete=True) == [Drift("b", None, 2)]
    assert diff(grid, store, pending={"a"}, grid_complete=False) == []  # b may just be evicted from memory
