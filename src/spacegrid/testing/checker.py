"""History checkers: per-key linearizability of a register with CAS (Wing & Gong / Knossos-style search with memoization, as Porcupine does), exact counters, and no acknowledged write lost."""

# Linearizability is P-compositional, so each key is checked on its own. Ops with outcome "fail" did not happen and
# are dropped; "info" ops complete at +infinity with an unconstrained output (an info read is dropped, an info write
# or cas may take effect at any time after its invocation, or never). Ops completing at the same instant another is
# invoked count as concurrent. Values are compared by their JSON form, as recorded by `history.HistoryWriter`.

from __future__ import annotations

import json
import math
import time
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from spacegrid.testing.history import Op

_READ, _WRITE, _CAS, _CAS_MAYBE = range(4)  # model steps; _CAS_MAYBE is an info cas, whose outcome is unknown
_CLOCK_EVERY = 1024  # search steps between two looks at the clock
_CONTEXT = 4  # ops completed just before the culprit that a counter-example shows


@dataclass
class CheckResult:
    """One check's verdict: ok True, False (with a counter-example, a small slice of ops) or None (gave up)."""

    ok: bool | None
    kind: str
    key: str | None
    message: str
    counterexample: list[Op] = field(default_factory=list)

    def describe(self) -> str:
        """The verdict, then the counter-example's ops one per line, for an assertion message."""
        verdict = {True: "ok", False: "violation", None: "unknown"}[self.ok]
        return "\n".join([f"{verdict} {self.kind} {self.key}: {self.message}",
                          *(f"  {op.describe()}" for op in self.counterexample)])


def check_register(ops: list[Op], initial: Any = None, time_limit_s: float = 10.0) -> CheckResult:
    """Whether one key's read/write/cas ops are linearizable for a register starting at `initial`."""
    key = _single_key(ops, {"read", "write", "cas"})
    live = [op for op in ops if op.outcome != "fail" and not (op.kind == "read" and op.outcome == "info")]
    phantom = _phantom_read(live, initial)
    if phantom is not None:
        message = f"{live[phantom].describe()} observed a value that no write or cas (ok or info) wrote"
        return CheckResult(False, "register", key, message, _context(live, [op.complete_s for op in live], phantom))
    observed = _observed(live)
    # an info write or cas of a value nobody observes changes nothing when taken as never applied: leave it out
    needed = [op for op in live if op.outcome == "ok" or _canon(op.value) in observed]
    intern = _interner(observed)
    steps = [_step_of(op, intern) for op in needed]
    ends = _deadlines(needed, initial)
    line = _timeline([(op.invoke_s, end) for op, end in zip(needed, ends, strict=True)])
    verdict, stuck, done = _Search(steps, line, intern(initial)).run(time.monotonic() + time_limit_s)
    if verdict is None:
        return CheckResult(None, "register", key, f"gave up after {time_limit_s}s on {len(needed)} ops")
    if verdict:
        return CheckResult(True, "register", key, f"{len(live)} ops linearizable")
    message = f"not linearizable: {needed[stuck].describe()} cannot take effect after {done} of {len(needed)} ops"
    return CheckResult(False, "register", key, message, _context(needed, ends, stuck))


def check_counter(ops: list[Op], final_value: int) -> CheckResult:
    """Whether one counter's incr (and read) ops agree with each other and with the counter's final value."""
    return _check_counter(_single_key(ops, {"incr", "read"}), ops, final_value)


def check_no_lost_writes(ops: list[Op], final_values: dict[str, Any], initial: Any = None) -> CheckResult:
    """Whether each key's final value is that of a write or cas that could have been the last to take effect."""
    by_key = _by_key(ops)
    results = [_check_final_value(key, by_key.get(key, []), final_values[key], initial) for key in sorted(final_values)]
    failures = [result for result in results if not result.ok]
    if not failures:
        return CheckResult(True, "lost-writes", None, f"{len(results)} keys end on a write that could be last")
    first = failures[0]
    others = f" (and {len(failures) - 1} more keys)" if len(failures) > 1 else ""
    return CheckResult(False, "lost-writes", first.key, first.message + others, first.counterexample)


def check_all(
    ops: list[Op], final_values: dict[str, Any], final_counters: dict[str, int], time_limit_s: float = 10.0
) -> list[CheckResult]:
    """Every check of a run, key by key: counters for keys in `final_counters`, registers and lost writes otherwise."""
    by_key = _by_key(ops)
    results: list[CheckResult] = []
    for key in sorted(by_key.keys() | final_values.keys() | final_counters.keys()):
        key_ops = by_key.get(key, [])
        if key in final_counters:
            results.append(_check_counter(key, key_ops, final_counters[key]))
            continue
        if any(op.kind == "incr" for op in key_ops):
            raise ValueError(f"key {key!r} has increments but no final counter value")
        if key_ops:
            results.append(check_register(key_ops, time_limit_s=time_limit_s))
        if key in final_values:
            results.append(_check_final_value(key, key_ops, final_values[key], None))
    return results


def _by_key(ops: list[Op]) -> dict[str, list[Op]]:
    """The ops grouped by key, each group in the given order."""
    groups: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        groups[op.key].append(op)
    return groups


def _single_key(ops: list[Op], kinds: set[str]) -> str | None:
    """The one key all ops share (None for no ops); ValueError for mixed keys or kinds outside `kinds`."""
    keys = {op.key for op in ops}
    if len(keys) > 1:
        raise ValueError(f"ops of several keys {sorted(keys)[:5]}: check each key on its own")
    _require_kinds(ops, kinds)
    return keys.pop() if keys else None


def _require_kinds(ops: list[Op], kinds: set[str]) -> None:
    """ValueError if any op is of a kind outside `kinds`."""
    strays = {op.kind for op in ops} - kinds
    if strays:
        raise ValueError(f"op kinds {sorted(strays)} cannot be checked here, only {sorted(kinds)}")


def _canon(value: Any) -> str:
    """The JSON form of a value, so that equal values after a JSON round trip compare equal."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _observed(ops: list[Op]) -> set[str]:
    """The values (JSON forms) some read returned or some cas expected: no other value can be told apart."""
    return {_canon(op.value if op.kind == "read" else op.expected) for op in ops if op.kind != "write"}


def _interner(observed: set[str]) -> Callable[[Any], int]:
    """The model's state for a value: a small int per observed value, 0 for the rest, which no op tells apart."""
    ids: dict[str, int] = {}
    return lambda value: ids.setdefault(form, len(ids) + 1) if (form := _canon(value)) in observed else 0


def _step_of(op: Op, intern: Callable[[Any], int]) -> tuple[int, int, int]:
    """The model step of a read, write or cas: (step kind, value id, expected id)."""
    code = {"read": _READ, "write": _WRITE, "cas": _CAS if op.outcome == "ok" else _CAS_MAYBE}[op.kind]
    return code, intern(op.value), intern(op.expected)


def _phantom_read(ops: list[Op], initial: Any) -> int | None:
    """The index of the first ok read of a value neither `initial` nor written by any write or cas, if any."""
    written = {_canon(initial)} | {_canon(op.value) for op in ops if op.kind != "read"}
    return next((i for i, op in enumerate(ops) if op.kind == "read" and _canon(op.value) not in written), None)


def _deadlines(ops: list[Op], initial: Any) -> list[float]:
    """Each op's completion, but an info op whose value no other op writes ends when an ok op first observes it."""
    # that ok op saw the value after the info op took effect: no verdict changes, and the op is not pending forever
    writers = Counter(_canon(op.value) for op in ops if op.kind != "read") + Counter([_canon(initial)])
    seen_by: dict[str, float] = {}
    for op in ops:
        if op.outcome == "ok" and op.kind != "write":
            seen = _canon(op.value if op.kind == "read" else op.expected)
            seen_by[seen] = min(seen_by.get(seen, math.inf), op.complete_s)
    return [
        max(op.invoke_s, seen_by.get(_canon(op.value), math.inf))
        if op.outcome == "info" and writers[_canon(op.value)] == 1
        else op.complete_s
        for op in ops
    ]


@dataclass(slots=True)
class _Timeline:
    """The call and return events of the ops in time order, a doubly linked list over arrays; entry 0 is the head."""

    nxt: list[int]
    prv: list[int]
    match: list[int]  # for a call entry: its return entry; for a return entry: -1
    op_of: list[int]


def _timeline(spans: list[tuple[float, float]]) -> _Timeline:
    """Calls at invocation, returns at completion, sorted by time with calls first at equal times."""
    calls = [(start, 0, i) for i, (start, _) in enumerate(spans)]
    events = sorted(calls + [(end, 1, i) for i, (_, end) in enumerate(spans)])
    size = len(events) + 1
    return_entry = {i: e for e, (_, is_return, i) in enumerate(events, start=1) if is_return}
    match = [-1] + [-1 if is_return else return_entry[i] for _, is_return, i in events]
    return _Timeline(
        nxt=[*range(1, size), -1], prv=list(range(-1, size - 1)), match=match, op_of=[-1] + [i for _, _, i in events]
    )


def _lift(line: _Timeline, call: int) -> None:
    """Unlink a call entry and its return entry from the list."""
    for entry in (call, line.match[call]):
        line.nxt[line.prv[entry]] = line.nxt[entry]
        if line.nxt[entry] != -1:
            line.prv[line.nxt[entry]] = line.prv[entry]


def _unlift(line: _Timeline, call: int) -> None:
    """Relink a call entry and its return entry where they were, undoing `_lift`."""
    for entry in (line.match[call], call):
        line.nxt[line.prv[entry]] = entry
        if line.nxt[entry] != -1:
            line.prv[line.nxt[entry]] = entry


def _apply(step: tuple[int, int, int], state: int) -> int:
    """The register's state after the step, or -1 if the step cannot take effect in `state`."""
    code, value, expected = step
    if code == _READ:
        return state if state == value else -1
    if code == _WRITE:
        return value
    if code == _CAS:
        return value if state == expected else -1
    return value if state == expected else state


class _Search:
    """Wing-Gong-Lowe backtracking over a timeline, with a cache of the (linearized set, state) pairs explored."""

    def __init__(self, steps: list[tuple[int, int, int]], line: _Timeline, state: int) -> None:
        """Start with nothing linearized, the register in `state`."""
        self.steps = steps
        self.line = line
        self.state = state
        self.reads = [value if code == _READ else -1 for code, value, _ in steps]
        self.linearized = 0
        self.stack: list[tuple[int, int, bool]] = []  # (call entry, state before it, taken as a forced read)
        self.seen: set[tuple[int, int]] = set()

    def run(self, deadline: float) -> tuple[bool | None, int, int]:
        """(verdict, culprit op, ops linearized then): the culprit's return is the furthest the search got stuck at."""
        line, steps = self.line, self.steps
        furthest, culprit, done = -1, -1, 0
        entry, count = self._enter(), 0
        while line.nxt[0] != -1:
            count += 1
            if count % _CLOCK_EVERY == 0 and time.monotonic() > deadline:
                return None, culprit, done
            if entry != -1 and line.match[entry] != -1:
                after = _apply(steps[line.op_of[entry]], self.state)
                entry = self._enter() if after != -1 and self._push(entry, after, False) else line.nxt[entry]
                continue
            if entry > furthest:
                furthest, culprit, done = entry, line.op_of[entry], len(self.stack)
            entry = self._backtrack()
            if entry == -1:
                return False, culprit, done
        return True, culprit, done

    def _enter(self) -> int:
        """Take the legal reads of a new node; the entry to try next, or -1 if this node was already explored."""
        # a read legal now changes no state and, invoked before every pending return, could be moved to the front of
        # any linearization completing this node: taking it first, with no alternative, loses nothing
        while (read := self._legal_read()) != -1:
            if not self._push(read, self.state, True):
                return -1
        return self.line.nxt[0]

    def _legal_read(self) -> int:
        """The first pending call that is a read of the current state, or -1."""
        line, entry = self.line, self.line.nxt[0]
        while entry != -1 and line.match[entry] != -1:
            if self.reads[line.op_of[entry]] == self.state:
                return entry
            entry = line.nxt[entry]
        return -1

    def _push(self, entry: int, after: int, forced: bool) -> bool:
        """Linearize the call at `entry`, leaving the register in `after`, unless that configuration was explored."""
        linearized = self.linearized | 1 << self.line.op_of[entry]
        if (linearized, after) in self.seen:
            return False
        self.seen.add((linearized, after))
        self.stack.append((entry, self.state, forced))
        self.linearized, self.state = linearized, after
        _lift(self.line, entry)
        return True

    def _backtrack(self) -> int:
        """Undo linearizations up to the last free choice; the entry after it to try next, or -1 if none is left."""
        while self.stack:
            entry, self.state, forced = self.stack.pop()
            self.linearized ^= 1 << self.line.op_of[entry]
            _unlift(self.line, entry)
            if not forced:
                return self.line.nxt[entry]
        return -1


def _context(ops: list[Op], ends: list[float], culprit: int) -> list[Op]:
    """In time order: the culprit, the ops overlapping it (by `ends`), the last few before it, its value's writers."""
    start, end, target = ops[culprit].invoke_s, ends[culprit], ops[culprit]
    overlapping = [i for i, op in enumerate(ops) if op.invoke_s <= end and start <= ends[i]]
    before = sorted((i for i in range(len(ops)) if ends[i] < start), key=ends.__getitem__)[-_CONTEXT:]
    needs = None if target.kind == "write" else _canon(target.value if target.kind == "read" else target.expected)
    sources = [i for i, op in enumerate(ops) if op.kind != "read" and _canon(op.value) == needs]
    chosen = [ops[i] for i in {*overlapping, *before, *sources}]
    return sorted(chosen, key=lambda op: (op.invoke_s, op.complete_s))


def _check_final_value(key: str, ops: list[Op], final: Any, initial: Any) -> CheckResult:
    """Whether `final` is the value of a write or cas that could be last: no ok one was invoked after it ended."""
    writes = [op for op in ops if op.kind in ("write", "cas") and op.outcome != "fail"]
    acknowledged = [op for op in writes if op.outcome == "ok"]
    last_invoke = max((op.invoke_s for op in acknowledged), default=-math.inf)
    could_be_last = [op for op in writes if op.complete_s >= last_invoke]
    allowed = {_canon(op.value) for op in could_be_last} | (set() if acknowledged else {_canon(initial)})
    if _canon(final) in allowed:
        return CheckResult(True, "lost-writes", key, f"final value {final!r} could be the last write's")
    if len(could_be_last) == 1 and could_be_last[0].outcome == "ok":
        message = f"acknowledged write lost: {could_be_last[0].describe()} was last, yet the final value is {final!r}"
    else:
        message = f"final value {final!r} is none of the {len(could_be_last)} writes that could be last"
    return CheckResult(False, "lost-writes", key, message, sorted(could_be_last, key=lambda op: op.invoke_s))


def _check_counter(key: str | None, ops: list[Op], final_value: int) -> CheckResult:
    """Final value within the ok and ok+info sums, unique ok results, and every result and read in its time window."""
    _require_kinds(ops, {"incr", "read"})
    incrs = [op for op in ops if op.kind == "incr" and op.outcome != "fail"]
    bad_amount = next((op for op in incrs if not isinstance(op.value, int) or op.value < 1), None)
    if bad_amount is not None:
        raise ValueError(f"increment amounts must be positive ints: {bad_amount.describe()}")
    acknowledged = [op for op in incrs if op.outcome == "ok"]
    low = sum(op.value for op in acknowledged)
    high = low + sum(op.value for op in incrs if op.outcome == "info")
    if not low <= final_value <= high:
        what = "under-count: acknowledged increments lost" if final_value < low else "over-count"
        message = f"{what}: final value {final_value} outside [{low}, {high}] (ok, ok + info increments)"
        tail = sorted(incrs, key=lambda op: op.complete_s)[-_CONTEXT:]
        return CheckResult(False, "counter", key, message, tail)
    duplicate = _duplicate_results(acknowledged)
    if duplicate:
        message = f"{len(duplicate)} acknowledged increments returned the same value {duplicate[0].result}"
        return CheckResult(False, "counter", key, message, duplicate)
    misplaced = _misplaced_counter_op(ops, incrs, final_value)
    if misplaced is not None:
        return CheckResult(False, "counter", key, misplaced[1], [misplaced[0]])
    message = f"{len(acknowledged)} ok increments, final value {final_value} in [{low}, {high}]"
    return CheckResult(True, "counter", key, message)


def _duplicate_results(acknowledged: list[Op]) -> list[Op]:
    """The ok increments sharing the first result that more than one of them returned, or []."""
    counts = Counter(op.result for op in acknowledged if op.result is not None)
    repeated = next((result for result, n in counts.items() if n > 1), None)
    return [op for op in acknowledged if repeated is not None and op.result == repeated]


def _misplaced_counter_op(ops: list[Op], incrs: list[Op], final_value: int) -> tuple[Op, str] | None:
    """The first ok incr result or ok read outside what the increments around it allow, with the reason."""
    done = sorted((op.complete_s, op.value) for op in incrs if op.outcome == "ok")
    done_times, done_sums = [t for t, _ in done], [0, *accumulate(amount for _, amount in done)]
    started = sorted((op.invoke_s, op.value) for op in incrs)
    started_times, started_sums = [t for t, _ in started], [0, *accumulate(amount for _, amount in started)]
    for op in ops:
        if op.outcome != "ok" or op.kind not in ("incr", "read"):
            continue
        observed = op.result if op.kind == "incr" else (op.value or 0)
        low = done_sums[bisect_left(done_times, op.invoke_s)] + (op.value if op.kind == "incr" else 0)
        high = min(final_value, started_sums[bisect_right(started_times, op.complete_s)])
        if not isinstance(observed, int) or not low <= observed <= high:
            return op, f"{op.describe()} observed {observed!r}, outside [{low}, {high}] allowed by its time span"
    return None
