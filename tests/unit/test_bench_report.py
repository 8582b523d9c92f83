"""The bench's pure parts: the ticket history checker (double sales, ledger against state) and the ratios/table."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from spacegrid.benchmark.history import History, ServerState, check, replay
from spacegrid.benchmark.report import build, ratios, table


def test_a_seat_sold_twice_is_caught() -> None:
    """Two acknowledged reserves of one seat with no release between them are a double sale: the check fails,
    even though the server's final state agrees with the last reserve."""
    history = History(reserved={"ann": (0, (5,), 1.0), "bob": (0, (5, 6), 2.0)})
    expected = replay(history)
    verdict = check(expected, ServerState({(0, 5): "bob", (0, 6): "bob"}, {0: 2}))
    assert verdict["ok"] is False
    assert verdict["double_sales"] == 1
    assert "event 0 seat 5: sold to ann and bob" in verdict["samples"]


def test_a_seat_resold_after_its_release_was_sent_passes() -> None:
    """A reserve acknowledged after the previous holder's release was sent is no double sale; a state equal to the
    ledger passes."""
    history = History(reserved={"ann": (0, (5,), 1.0), "bob": (0, (5,), 3.0)},
                      released={"ann": (0, (5,), 2.0, 1)})
    verdict = check(replay(history), ServerState({(0, 5): "bob"}, {0: 1, 1: 0}))
    assert verdict["ok"] is True and verdict["double_sales"] == 0 and verdict["seats_held_expected"] == 1


def test_a_state_that_differs_from_the_ledger_fails() -> None:
    """A seat held by someone the history does not say, a wrong `sold`, a missing seat and a failed target check
    each fail the run."""
    expected = replay(History(reserved={"ann": (0, (5,), 1.0), "cy": (1, (2,), 1.0)}))
    assert check(expected, ServerState({(0, 5): "eve", (1, 2): "cy"}, {0: 1, 1: 1}))["seat_mismatches"] == 1
    assert check(expected, ServerState({(0, 5): "ann", (1, 2): "cy"}, {0: 2, 1: 1}))["sold_mismatches"] == 1
    assert check(expected, ServerState({(0, 5): "ann"}, {0: 1, 1: 1}))["ok"] is False
    verdict = check(expected, ServerState({(0, 5): "ann", (1, 2): "cy"}, {0: 1, 1: 1}, {"sales_ok": False}))
    assert verdict["ok"] is False and verdict["failed_checks"] == ["sales_ok"]


def test_seats_of_an_operation_with_unknown_outcome_are_not_judged() -> None:
    """A reserve that failed with an error may or may not have happened: its seats and events are left alone."""
    history = History(reserved={"ann": (0, (5,), 1.0)}, uncertain={"bob": (0, (5,))})
    verdict = check(replay(history), ServerState({(0, 5): "bob"}, {0: 1}))
    assert verdict["ok"] is True and verdict["uncertain_seats"] == 1


def _result(ops_per_s: float, cpu_total: float, write_p99: float, ok: bool = True) -> dict[str, Any]:
    latency = {"count": 10, "p50": 1.0, "p99": write_p99}
    return {"ops_per_s": ops_per_s, "cpu_us_per_op": {"total": cpu_total},
            "latency_ms": {"read": {"count": 10, "p50": 2.0, "p99": 4.0}, "write": latency},
            "target": {"durability": "fsync before ack"}, "check": {"ok": ok, "failed_checks": []}}


def test_ratios_are_to_postgresql_with_synchronous_commit_on() -> None:
    """ops/s, CPU per operation and write p99 are divided by pg-on's; a target that errored gets none."""
    results = {"grid1": _result(30_000, 50.0, 5.0), "pg-on": _result(10_000, 200.0, 20.0),
               "redis-always": {"error": "ConnectionError: refused", "check": {"ok": False}}}
    found = ratios(results, "pg-on")
    assert found["grid1"] == {"ops_per_s": 3.0, "cpu_us_per_op": 0.25, "write_p99": 0.25, "read_p50": 1.0}
    assert found["pg-on"]["ops_per_s"] == 1.0
    assert "redis-always" not in found
    assert ratios({"grid1": _result(30_000, 50.0, 5.0)}, "pg-on") == {}


def test_the_report_fails_on_a_failed_check_and_the_table_shows_ratios() -> None:
    """A target whose check failed makes the run fail; the table has a row per target with its ratio."""
    document = build({"grid1": [_result(30_000, 50.0, 5.0, ok=False)], "pg-on": [_result(10_000, 200.0, 20.0)]},
                     {"events": 1000}, "pg-on")
    assert document["passed"] is False and document["failed"] == ["grid1"]
    console = Console(record=True, width=220)
    console.print(table(document))
    text = console.export_text()
    assert "grid1" in text and "30,000" in text and "3.00x" in text and "0.25x" in text and "FAILED" in text


def test_rounds_report_each_targets_median_round_and_fail_on_any_failed_round() -> None:
    """With several rounds a target stands for its median-throughput round (latency and CPU of that same run), the
    report keeps every round's ops/s, and one failed round of a target fails the run."""
    rounds = [_result(30_000, 50.0, 5.0), _result(20_000, 70.0, 9.0), _result(25_000, 60.0, 7.0)]
    document = build({"grid1": rounds, "pg-on": [_result(10_000, 200.0, 20.0)] * 3}, {"events": 1000}, "pg-on")
    assert document["results"]["grid1"]["ops_per_s"] == 25_000
    assert document["ratios"]["grid1"]["ops_per_s"] == 2.5
    assert document["rounds_ops_per_s"]["grid1"] == [30_000, 20_000, 25_000]
    assert document["passed"] is True
    even = build({"grid1": rounds[:2]}, {"events": 1000}, "pg-on")
    assert even["results"]["grid1"]["ops_per_s"] == 20_000  # the lower middle of an even count
    failed = build({"grid1": [*rounds, _result(40_000, 40.0, 4.0, ok=False)]}, {"events": 1000}, "pg-on")
    assert failed["passed"] is False and failed["failed"] == ["grid1"]
