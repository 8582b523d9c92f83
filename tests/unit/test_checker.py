"""Unit tests of the chaos-history recorder and checkers: register linearizability, counters, lost writes."""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from spacegrid.testing.checker import check_all, check_counter, check_no_lost_writes, check_register
from spacegrid.testing.history import HistoryWriter, Op, load_history

INF = math.inf


def op(
    kind: str,
    value: Any,
    start: float,
    end: float,
    outcome: str = "ok",
    expected: Any = None,
    result: int | None = None,
    process: str = "p",
    key: str = "k",
) -> Op:
    """An Op with the test's usual defaults."""
    return Op(process, key, kind, value, start, end, outcome, expected, result)  # type: ignore[arg-type]


# --- register: accepted -------------------------------------------------------------------------------------------


def test_sequential_history_is_linearizable():
    """Writes, reads and a CAS one after another, each read seeing the previous write, are accepted."""
    history = [
        op("read", None, 0, 1),
        op("write", 1, 2, 3),
        op("read", 1, 4, 5),
        op("write", 2, 6, 7),
        op("cas", 3, 8, 9, expected=2),
        op("read", 3, 10, 11),
    ]
    result = check_register(history)
    assert result.ok is True, result.message
    assert (result.kind, result.key) == ("register", "k")


@pytest.mark.parametrize("seen", [1, 2])
def test_concurrent_writes_allow_a_read_of_either_value(seen):
    """Two overlapping writes may take effect in either order, so a later read of either value is accepted."""
    history = [
        op("write", 1, 0, 5, process="a"),
        op("write", 2, 1, 6, process="b"),
        op("read", None, 0.5, 0.8, process="c"),
        op("read", seen, 7, 8, process="c"),
    ]
    assert check_register(history).ok is True


def test_reads_during_overlapping_writes_see_one_order():
    """Reads during two in-flight writes may see 1 then 2, but not 1 again after that."""
    history = [
        op("write", 1, 0, 10, process="a"),
        op("write", 2, 0, 10, process="b"),
        op("read", 1, 1, 2, process="c"),
        op("read", 2, 3, 4, process="c"),
        op("read", 2, 11, 12, process="c"),
    ]
    assert check_register(history).ok is True
    assert check_register([*history[:4], op("read", 1, 5, 6, process="c")]).ok is False


def test_cas_chain_is_linearizable():
    """A chain of CAS each from the previous value, with a failed CAS ignored, is accepted."""
    history = [
        op("write", 0, 0, 1),
        op("cas", 1, 2, 3, expected=0),
        op("cas", 2, 2.5, 4, expected=1, process="q"),
        op("cas", 9, 5, 6, expected=1, outcome="fail"),
        op("read", 2, 7, 8),
    ]
    assert check_register(history).ok is True


@pytest.mark.parametrize("seen", [1, 2])
def test_info_write_may_or_may_not_have_applied(seen):
    """A timed-out (info) write may be observed later, or never."""
    history = [
        op("write", 1, 0, 1),
        op("write", 2, 2, INF, outcome="info", process="q"),
        op("read", seen, 5, 6),
        op("read", seen, 7, 8),
    ]
    assert check_register(history).ok is True


def test_info_write_once_seen_cannot_be_unseen():
    """After a read sees an info write's value, a later read of the value it overwrote is rejected."""
    history = [
        op("write", 1, 0, 1),
        op("write", 2, 2, INF, outcome="info", process="q"),
        op("read", 2, 5, 6),
        op("read", 1, 7, 8),
    ]
    assert check_register(history).ok is False


@pytest.mark.parametrize(("seen", "ok"), [(1, True), (5, True), (2, True), (7, False)])
def test_info_cas_applies_only_from_its_expected_value(seen, ok):
    """An info CAS 1->5 may or may not apply; an info CAS 3->7 from a value the key never holds cannot apply."""
    history = [
        op("write", 1, 0, 1),
        op("cas", 5, 2, INF, expected=1, outcome="info", process="q"),
        op("cas", 7, 2, INF, expected=3, outcome="info", process="r"),
        op("write", 2, 3, INF, outcome="info", process="s"),
        op("read", seen, 5, 6),
    ]
    assert check_register(history).ok is ok


def test_info_write_of_a_repeated_value_may_apply_after_it_is_first_read():
    """An info write of a value another write also wrote may still take effect after the first read of that value."""
    history = [
        op("write", 2, 0, 1, process="a"),
        op("write", 2, 0, INF, outcome="info", process="b"),
        op("read", 2, 1.5, 2, process="c"),
        op("write", 3, 3, 4, process="a"),
        op("read", 2, 5, 6, process="c"),
    ]
    assert check_register(history).ok is True


def test_failed_and_info_reads_are_ignored():
    """A failed read and an info read constrain nothing, whatever value they carry."""
    history = [
        op("write", 1, 0, 1),
        op("read", 42, 2, 3, outcome="fail"),
        op("read", 43, 2, INF, outcome="info"),
        op("read", 1, 4, 5),
    ]
    assert check_register(history).ok is True


def test_ops_touching_at_one_instant_count_as_concurrent():
    """A read invoked at the very instant a write completes may still see the value before it."""
    history = [op("write", 1, 0, 1), op("write", 2, 2, 3), op("read", 1, 3, 4)]
    assert check_register(history).ok is True


def test_initial_value_is_honoured():
    """A read before any write sees the given initial value, not None."""
    assert check_register([op("read", 0, 0, 1)], initial=0).ok is True
    assert check_register([op("read", None, 0, 1)], initial=0).ok is False


def test_values_compare_by_their_json_form():
    """Structured values compare equal after a JSON round trip (tuple written, list read)."""
    history = [op("write", {"a": (1, 2)}, 0, 1), op("read", {"a": [1, 2]}, 2, 3)]
    assert check_register(history).ok is True


# --- register: rejected -------------------------------------------------------------------------------------------


def test_read_of_a_value_never_written_is_rejected():
    """A read of a value no write or CAS wrote is rejected, with the read in the counter-example."""
    bad = op("read", 3, 4, 5)
    result = check_register([op("write", 1, 0, 1), op("write", 2, 2, 3), bad])
    assert result.ok is False
    assert bad in result.counterexample
    assert "no write or cas" in result.message


def test_read_of_a_failed_write_is_rejected():
    """A failed write did not happen, so reading its value is rejected."""
    history = [op("write", 1, 0, 1), op("write", 2, 2, 3, outcome="fail"), op("read", 2, 4, 5)]
    assert check_register(history).ok is False


def test_stale_read_after_acknowledged_write_is_rejected():
    """A read invoked after write 2 completed that still sees 1 is rejected; the counter-example shows both."""
    w1, w2, stale = op("write", 1, 0, 1), op("write", 2, 2, 3), op("read", 1, 4, 5, process="q")
    result = check_register([w1, w2, stale])
    assert result.ok is False
    assert stale.describe() in result.message
    assert result.counterexample == [w1, w2, stale]


def test_two_successful_cas_from_the_same_value_are_rejected():
    """Two overlapping CAS 0->1 and 0->2 cannot both succeed."""
    history = [
        op("write", 0, 0, 1),
        op("cas", 1, 2, 4, expected=0, process="a"),
        op("cas", 2, 3, 5, expected=0, process="b"),
    ]
    result = check_register(history)
    assert result.ok is False
    assert {o.process for o in result.counterexample} >= {"a", "b"}


def test_read_going_back_in_time_is_rejected():
    """With w1 completed before w2 began, reading 2 and then 1 is rejected, even while w2 is in flight."""
    history = [
        op("write", 1, 0, 1),
        op("write", 2, 2, 10, process="w"),
        op("read", 2, 3, 4, process="r"),
        op("read", 1, 5, 6, process="r"),
    ]
    result = check_register(history)
    assert result.ok is False
    assert [o.value for o in result.counterexample] == [1, 2, 2, 1]


def test_search_past_its_time_limit_gives_up():
    """A search that would take long returns ok None (unknown) once the time limit passes."""
    writes = [op("write", i, 0, 10, process=f"w{i}") for i in range(24)]
    history = [*writes, op("read", 99, 11, 12), op("write", 99, 13, 14)]
    started = time.monotonic()
    result = check_register(history, time_limit_s=0.2)
    assert result.ok is None
    assert time.monotonic() - started < 2


def test_register_refuses_mixed_keys_and_increments():
    """check_register takes one key's read/write/cas ops only."""
    with pytest.raises(ValueError, match="several keys"):
        check_register([op("write", 1, 0, 1), op("write", 1, 0, 1, key="other")])
    with pytest.raises(ValueError, match="incr"):
        check_register([op("incr", 1, 0, 1, result=1)])


# --- counters -----------------------------------------------------------------------------------------------------


def _counter_history() -> list[Op]:
    """Three overlapping increments of 1, 2 and 3 with distinct results, and a read between."""
    return [
        op("incr", 1, 0, 2, result=1, process="a"),
        op("incr", 2, 1, 3, result=3, process="b"),
        op("read", 3, 3.5, 4, process="c"),
        op("incr", 3, 5, 6, result=6, process="a"),
    ]


def test_exact_counter_is_accepted():
    """Distinct results in their windows and the final value equal to the sum of increments are accepted."""
    result = check_counter(_counter_history(), 6)
    assert result.ok is True, result.message
    assert (result.kind, result.key) == ("counter", "k")


def test_counter_under_count_is_rejected():
    """A final value below the sum of acknowledged increments is a lost increment."""
    result = check_counter(_counter_history(), 5)
    assert result.ok is False
    assert "under-count" in result.message


def test_counter_over_count_is_rejected():
    """A final value above the sum of acknowledged and unknown increments is rejected."""
    assert check_counter(_counter_history(), 7).ok is False


def test_counter_duplicate_results_are_rejected():
    """Two acknowledged increments returning the same value are rejected, both in the counter-example."""
    history = [op("incr", 1, 0, 2, result=1, process="a"), op("incr", 1, 1, 3, result=1, process="b")]
    result = check_counter(history, 2)
    assert result.ok is False
    assert len(result.counterexample) == 2


@pytest.mark.parametrize("final", [3, 8])
def test_counter_info_increments_count_either_way(final):
    """An info increment may or may not be in the final value; a failed one must not be."""
    history = [
        op("incr", 1, 0, 1, result=1),
        op("incr", 2, 2, 3, result=3),
        op("incr", 5, 4, INF, outcome="info", process="q"),
        op("incr", 7, 4, 5, outcome="fail", process="r"),
    ]
    assert check_counter(history, final).ok is True
    assert check_counter(history, 10).ok is False


def test_counter_result_outside_its_window_is_rejected():
    """An increment invoked after another completed cannot return a value that ignores it."""
    history = [op("incr", 1, 0, 1, result=1), op("incr", 2, 2, 3, result=2, process="q")]
    result = check_counter(history, 3)
    assert result.ok is False
    assert "outside [3, 3]" in result.message
    assert result.counterexample == [history[1]]
    history = [op("incr", 1, 0, 1, result=2), op("incr", 1, 2, 3, result=1, process="q")]
    assert check_counter(history, 2).ok is False


def test_counter_stale_read_is_rejected():
    """A counter read invoked after increments completed cannot return less than their sum."""
    history = [*_counter_history()[:2], op("read", 1, 3.5, 4, process="c")]
    assert check_counter(history, 3).ok is False


# --- lost writes --------------------------------------------------------------------------------------------------


def test_final_value_of_the_last_acknowledged_write_is_accepted():
    """A key ending on its last acknowledged write passes."""
    history = [op("write", 1, 0, 1), op("write", 2, 2, 3)]
    assert check_no_lost_writes(history, {"k": 2}).ok is True


def test_lost_acknowledged_write_at_the_end_is_rejected():
    """A key ending on an older value than its last acknowledged write lost that write."""
    history = [op("write", 1, 0, 1), op("write", 2, 2, 3), op("cas", 3, 4, 5, expected=9, outcome="fail")]
    result = check_no_lost_writes(history, {"k": 1})
    assert result.ok is False
    assert "acknowledged write lost" in result.message
    assert result.key == "k"
    assert [o.value for o in result.counterexample] == [2]


@pytest.mark.parametrize(("final", "ok"), [(1, True), (2, True), (3, True), (0, False), (None, False)])
def test_final_value_may_be_any_write_that_could_be_last(final, ok):
    """Overlapping final writes and an info write may each be last; the overwritten or initial value may not."""
    history = [
        op("write", 0, 0, 1),
        op("write", 1, 2, 5, process="a"),
        op("write", 2, 3, 6, process="b"),
        op("write", 3, 4, INF, outcome="info", process="c"),
    ]
    assert check_no_lost_writes(history, {"k": final}).ok is ok


def test_untouched_key_keeps_its_initial_value():
    """A key without acknowledged writes may end absent; failed writes do not count."""
    history = [op("write", 1, 0, 1, outcome="fail")]
    assert check_no_lost_writes(history, {"k": None, "other": None}).ok is True
    assert check_no_lost_writes(history, {"k": 1}).ok is False


# --- check_all ----------------------------------------------------------------------------------------------------


def test_check_all_groups_by_key_and_kind():
    """Counters get a counter check; other keys a register check and, with a final value, a lost-write check."""
    history = [
        op("write", 1, 0, 1, key="a"),
        op("read", 1, 2, 3, key="a"),
        op("write", 5, 0, 1, key="b"),
        op("read", 6, 2, 3, key="b"),
        op("incr", 1, 0, 1, result=1, key="n"),
    ]
    results = check_all(history, {"a": 1, "b": 5}, {"n": 1})
    assert [(r.key, r.kind, r.ok) for r in results] == [
        ("a", "register", True),
        ("a", "lost-writes", True),
        ("b", "register", False),
        ("b", "lost-writes", True),
        ("n", "counter", True),
    ]
    with pytest.raises(ValueError, match="no final counter"):
        check_all(history, {}, {})
    with pytest.raises(ValueError, match="write"):
        check_all([*history, op("write", 1, 0, 1, key="n")], {}, {"n": 1})


# --- recorder -----------------------------------------------------------------------------------------------------


def _ticks() -> Any:
    """A fake clock returning 1.0, 2.0, 3.0, ..."""
    return itertools.count(1.0).__next__


def test_history_round_trips_through_files(tmp_path: Path):
    """Ops recorded by two writers load back, paired and sorted by invocation, equal to what complete returned."""
    with (
        HistoryWriter(tmp_path / "a.jsonl", "a", clock=_ticks()) as a,
        HistoryWriter(tmp_path / "b.jsonl", "b", clock=_ticks()) as b,
    ):
        w = a.invoke("k", "write", 1)
        r = b.invoke("k", "read")
        c = a.invoke("k", "cas", {"v": [2]}, expected=1)
        i = b.invoke("n", "incr", 3)
        done = [
            a.complete(w, "ok"),
            b.complete(r, "ok", value=1),
            a.complete(c, "fail"),
            b.complete(i, "ok", result=3),
        ]
    loaded = load_history([tmp_path / "a.jsonl", tmp_path / "b.jsonl"])
    assert loaded == sorted(done, key=lambda o: (o.invoke_s, o.process))
    assert loaded[0] == Op("a", "k", "write", 1, 1.0, 3.0, "ok")
    assert Op("b", "k", "read", 1, 1.0, 3.0, "ok") in loaded
    assert Op("b", "n", "incr", 3, 2.0, 4.0, "ok", result=3) in loaded
    for line in (tmp_path / "a.jsonl").read_text().splitlines():
        json.loads(line)


def test_invoke_without_completion_loads_as_info(tmp_path: Path):
    """An op invoked but never completed (the process was killed) loads as info completing at infinity."""
    writer = HistoryWriter(tmp_path / "p.jsonl", "p", clock=_ticks())
    writer.invoke("k", "write", 7)
    writer.close()
    assert load_history([tmp_path / "p.jsonl"]) == [Op("p", "k", "write", 7, 1.0, INF, "info")]


def test_restarted_process_appends_to_its_file(tmp_path: Path):
    """A second writer on the same file (a restarted process) adds ops without clashing with the first's."""
    for _ in range(2):
        with HistoryWriter(tmp_path / "p.jsonl", "p") as writer:
            writer.complete(writer.invoke("k", "write", 1), "ok")
    assert [o.outcome for o in load_history([tmp_path / "p.jsonl"])] == ["ok", "ok"]


def test_unterminated_last_line_is_dropped(tmp_path: Path):
    """A completion line cut short by a crash is dropped, so its op loads as info."""
    path = tmp_path / "p.jsonl"
    with HistoryWriter(path, "p") as writer:
        writer.complete(writer.invoke("k", "write", 1), "ok")
    path.write_text(path.read_text()[:-10])
    assert [o.outcome for o in load_history([path])] == ["info"]


def test_loader_rejects_orphan_and_repeated_records(tmp_path: Path):
    """A completion without its invocation, or a record seen twice, is a corrupt history."""
    path = tmp_path / "p.jsonl"
    with HistoryWriter(path, "p") as writer:
        writer.complete(writer.invoke("k", "write", 1), "ok")
    invoke_line, complete_line = path.read_text().splitlines()
    (tmp_path / "orphan.jsonl").write_text(complete_line + "\n")
    with pytest.raises(ValueError, match="without an invocation"):
        load_history([tmp_path / "orphan.jsonl"])
    with pytest.raises(ValueError, match="twice"):
        load_history([path, path])


def test_writer_refuses_double_completion_and_bad_outcomes(tmp_path: Path):
    """Completing an op twice, or with an unknown outcome or kind, raises."""
    with HistoryWriter(tmp_path / "p.jsonl", "p") as writer:
        handle = writer.invoke("k", "write", 1)
        with pytest.raises(ValueError, match="outcome"):
            writer.complete(handle, "maybe")  # type: ignore[arg-type]
        writer.complete(handle, "ok")
        with pytest.raises(ValueError, match="not pending"):
            writer.complete(handle, "ok")
        with pytest.raises(ValueError, match="kind"):
            writer.invoke("k", "delete")  # type: ignore[arg-type]


# --- randomized: histories of real executions ---------------------------------------------------------------------


@dataclass
class _Planned:
    """One op of a simulated run before its effect is known: who, what and when."""

    process: str
    kind: str
    invoke_s: float
    effect_s: float
    complete_s: float


def _plan(rng: random.Random, n_ops: int, processes: int) -> list[_Planned]:
    """Each process runs ops one after another, with random gaps, latencies and effect points inside them."""
    clocks = [0.0] * processes
    planned = []
    for _ in range(n_ops):
        p = rng.randrange(processes)
        invoke = clocks[p] + rng.uniform(0, 0.2)
        effect = invoke + rng.expovariate(2.0)
        complete = effect + rng.expovariate(2.0)
        clocks[p] = complete
        planned.append(_Planned(f"p{p}", rng.choice(["read", "write", "cas"]), invoke, effect, complete))
    return planned


def _simulate(seed: int, n_ops: int, processes: int = 8, info_rate: float = 0.05) -> tuple[list[Op], Any]:
    """A register run applied in effect order, with overlapping timing, fails and infos: (history, final value)."""
    rng = random.Random(seed)
    state: Any = None
    held: list[Any] = [None]  # every value the register held, for CAS from a stale expectation
    ops = []
    for fresh, plan in enumerate(sorted(_plan(rng, n_ops, processes), key=lambda p: p.effect_s), start=1):
        lost = rng.random() < info_rate
        value: Any = fresh
        expected = None
        if plan.kind == "read":
            value, outcome = (None, "info") if lost else (state, "ok")
        else:
            expected = None if plan.kind == "write" else state if rng.random() < 0.7 else rng.choice(held)
            takes = plan.kind == "write" or expected == state
            outcome = "info" if lost else "ok" if takes else "fail"
            if takes and (not lost or rng.random() < 0.5):
                state = value
                held.append(value)
        complete = INF if outcome == "info" else plan.complete_s
        ops.append(op(plan.kind, value, plan.invoke_s, complete, outcome, expected, process=plan.process))
    return sorted(ops, key=lambda o: o.invoke_s), state


def _impossible_values(ops: list[Op], read: Op) -> list[Any]:
    """Values `read` cannot have seen: written only after it completed, or overwritten before it began."""
    writes = [o for o in ops if o.kind != "read" and o.outcome != "fail"]
    future = [w.value for w in writes if w.invoke_s > read.complete_s]
    acked = [w for w in writes if w.outcome == "ok"]
    stale = [
        w.value
        for w in acked
        if any(w.complete_s < later.invoke_s and later.complete_s < read.invoke_s for later in acked)
    ]
    return future + stale


@pytest.mark.parametrize("info_rate", [0.0, 0.05, 0.2])
@pytest.mark.parametrize("seed", range(15))
def test_simulated_histories_are_accepted(seed, info_rate):
    """Histories of real sequential executions with random overlapping timing are always linearizable."""
    history, final = _simulate(seed, 150, info_rate=info_rate)
    result = check_register(history)
    assert result.ok is True, result.message
    assert check_no_lost_writes(history, {"k": final}).ok is True


@pytest.mark.parametrize("info_rate", [0.0, 0.05, 0.2])
@pytest.mark.parametrize("seed", range(15))
def test_simulated_histories_with_one_impossible_read_are_rejected(seed, info_rate):
    """Changing one read to a value it cannot have seen (a future or overwritten one) makes the history rejected."""
    rng = random.Random(1000 + seed)
    history, _ = _simulate(seed, 100, info_rate=info_rate)
    reads = [i for i, o in enumerate(history) if o.kind == "read" and o.outcome == "ok"]
    candidates = [(i, v) for i in reads for v in _impossible_values(history, history[i])]
    index, bad = rng.choice(candidates)
    corrupted = [*history[:index], replace(history[index], value=bad), *history[index + 1 :]]
    result = check_register(corrupted)
    assert result.ok is False, f"read #{index} of {bad!r} accepted"
    assert result.counterexample


def test_checker_is_fast_on_500_ops_with_8_processes():
    """A 500-op single-key history of 8 concurrent processes checks in well under a second."""
    history, _ = _simulate(7, 500)
    started = time.perf_counter()
    result = check_register(history)
    elapsed = time.perf_counter() - started
    assert result.ok is True, result.message
    assert elapsed < 1.0, f"{elapsed:.3f}s"


def _brute_force_linearizable(ops: list[Op], initial: Any = None) -> bool:
    """Whether some order of the ops that happened respects real time and register semantics, by trying them all."""
    live = [o for o in ops if o.outcome != "fail" and not (o.kind == "read" and o.outcome == "info")]
    return any(_legal_order(order, initial) for order in itertools.permutations(live))


def _legal_order(order: tuple[Op, ...], initial: Any) -> bool:
    """Whether no op precedes one that completed before it was invoked, and each step is legal from the last state."""
    if any(later.complete_s < earlier.invoke_s for earlier, later in itertools.combinations(order, 2)):
        return False
    state = initial
    for o in order:
        if o.kind == "read" and o.value != state or o.kind == "cas" and o.outcome == "ok" and o.expected != state:
            return False
        if o.kind == "write" or o.kind == "cas" and o.expected == state:
            state = o.value
    return True


def _arbitrary_history(rng: random.Random) -> list[Op]:
    """A small history of random ops on few values and coarse times, so values repeat and times tie."""
    ops = []
    for n in range(rng.randint(2, 6)):
        kind = rng.choice(["read", "write", "cas"])
        outcome = rng.choice(["ok", "ok", "ok", "info", "fail"])
        start = rng.randint(0, 6)
        end = INF if outcome == "info" else start + rng.randint(0, 3)
        value, expected = rng.choice([None, 1, 2, 3]), rng.choice([None, 1, 2]) if kind == "cas" else None
        ops.append(op(kind, value, start, end, outcome=outcome, expected=expected, process=f"p{n}"))
    return ops


@pytest.mark.parametrize("seed", range(4))
def test_register_checker_agrees_with_brute_force(seed):
    """On small arbitrary histories (repeated values, tied times, infos, fails) the search and brute force agree."""
    rng = random.Random(seed)
    verdicts = set()
    for _ in range(300):
        history = _arbitrary_history(rng)
        expected = _brute_force_linearizable(history)
        verdicts.add(expected)
        assert check_register(history).ok is expected, "\n".join(o.describe() for o in history)
    assert verdicts == {True, False}
