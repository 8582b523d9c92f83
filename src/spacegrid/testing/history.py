"""Recording operation histories for chaos tests: one JSON-lines file per client process."""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, get_args

from spacegrid.errors import CallerError, NotApplied

Kind = Literal["read", "write", "cas", "incr"]
Outcome = Literal["ok", "fail", "info"]
KINDS: frozenset[str] = frozenset(get_args(Kind))
OUTCOMES: frozenset[str] = frozenset(get_args(Outcome))
_KEEP: Any = object()  # `complete` default: keep the value given at invocation


def outcome_of(exc: BaseException) -> Outcome:
    """fail for an error that guarantees the operation was not applied, info (maybe applied) for anything else."""
    return "fail" if isinstance(exc, NotApplied | CallerError) else "info"


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of one process on one key: what was invoked, when, and how it completed."""

    process: str
    key: str
    kind: Kind
    value: Any  # the value written, the value read (None = absent), the CAS new value or the increment amount
    invoke_s: float  # time.monotonic() before sending
    complete_s: float  # time.monotonic() on completion; +inf for info ops never completed
    outcome: Outcome  # ok: took effect; fail: definitely did not; info: unknown (at any time after invoke, or never)
    expected: Any = None  # for cas: the expected value
    result: int | None = None  # for an ok incr: the counter value returned

    def __post_init__(self) -> None:
        """Reject unknown kinds and outcomes, and completions before invocations."""
        if self.kind not in KINDS:
            raise ValueError(f"unknown op kind {self.kind!r}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown op outcome {self.outcome!r}")
        if self.complete_s < self.invoke_s:
            raise ValueError(f"op completes ({self.complete_s}) before it is invoked ({self.invoke_s})")

    def describe(self) -> str:
        """One line for reports, e.g. `p1 cas k 1->2 [0.100, 0.200] ok`."""
        what = f"{self.expected!r}->{self.value!r}" if self.kind == "cas" else repr(self.value)
        returned = f" = {self.result}" if self.result is not None else ""
        span = f"[{self.invoke_s:.6f}, {self.complete_s:.6f}]"
        return f"{self.process} {self.kind} {self.key} {what}{returned} {span} {self.outcome}"


@dataclass(frozen=True, slots=True)
class Pending:
    """An invoked operation awaiting completion: the handle `HistoryWriter.invoke` returns."""

    op_id: str
    process: str
    key: str
    kind: Kind
    value: Any
    expected: Any
    invoke_s: float


class HistoryWriter:
    """Appends one process's operations to a JSON-lines file: a flushed line at invocation and one at completion."""

    def __init__(
        self, path: str | os.PathLike[str], process: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Open `path` for appending; `clock` must be comparable across processes (time.monotonic on one machine)."""
        self.process = process
        self._clock = clock
        self._session = uuid.uuid4().hex  # op ids stay unique when a restarted process appends to the same file
        self._count = 0
        self._open: set[str] = set()
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def invoke(self, key: str, kind: Kind, value: Any = None, expected: Any = None) -> Pending:
        """Record that an operation is about to be sent; call before sending it, so a crash cannot hide it."""
        if kind not in KINDS:
            raise ValueError(f"unknown op kind {kind!r}")
        self._count += 1
        pending = Pending(f"{self._session}-{self._count}", self.process, key, kind, value, expected, self._clock())
        self._write(
            {
                "event": "invoke",
                "id": pending.op_id,
                "process": self.process,
                "key": key,
                "kind": kind,
                "value": value,
                "expected": expected,
                "t": pending.invoke_s,
            }
        )
        self._open.add(pending.op_id)
        return pending

    def complete(self, handle: Pending, outcome: Outcome, value: Any = _KEEP, result: int | None = None) -> Op:
        """Record how an operation ended (for reads `value` is the value observed) and return the completed Op."""
        if handle.op_id not in self._open:
            raise ValueError(f"operation {handle.op_id} is not pending in this writer")
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown op outcome {outcome!r}")
        final_value = handle.value if value is _KEEP else value
        op = Op(handle.process, handle.key, handle.kind, final_value, handle.invoke_s, self._clock(), outcome,
                handle.expected, result)
        record = {"event": "complete", "id": handle.op_id, "outcome": outcome, "result": result, "t": op.complete_s}
        if value is not _KEEP:
            record["value"] = value
        self._write(record)
        self._open.discard(handle.op_id)
        return op

    def close(self) -> None:
        """Close the file; operations still pending are read back as info."""
        self._file.close()

    def __enter__(self) -> HistoryWriter:
        """Use as a context manager that closes the file."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the file."""
        self.close()

    def _write(self, record: dict[str, Any]) -> None:
        """Append one JSON line and flush it to the OS, so a killed process loses nothing it recorded."""
        self._file.write(json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n")
        self._file.flush()


def load_history(paths: Iterable[str | os.PathLike[str]]) -> list[Op]:
    """Pair the invoke and complete lines of all files into Ops sorted by invocation; an unpaired invoke is info."""
    invokes: dict[str, dict[str, Any]] = {}
    completes: dict[str, dict[str, Any]] = {}
    for path in paths:
        for record in _records(Path(path)):
            target = invokes if record["event"] == "invoke" else completes
            if record["id"] in target:
                raise ValueError(f"{path}: operation {record['id']} recorded twice as {record['event']}")
            target[record["id"]] = record
    orphans = completes.keys() - invokes.keys()
    if orphans:
        raise ValueError(f"completions without an invocation: {sorted(orphans)[:5]}")
    ops = [_pair(invoke, completes.get(op_id)) for op_id, invoke in invokes.items()]
    return sorted(ops, key=lambda op: (op.invoke_s, op.process))


def _records(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON records of one file, dropping an unterminated last line (a write cut short by a crash)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines[:-1], start=1):
        if not line:
            continue
        record = json.loads(line)
        if not isinstance(record, dict) or record.get("event") not in ("invoke", "complete"):
            raise ValueError(f"{path}:{number}: not a history record: {line[:80]}")
        yield record


def _pair(invoke: dict[str, Any], complete: dict[str, Any] | None) -> Op:
    """One Op from its invoke record and its complete record, or an info Op completing at infinity without one."""
    if complete is None:
        return Op(invoke["process"], invoke["key"], invoke["kind"], invoke["value"], invoke["t"], math.inf, "info",
                  invoke["expected"])
    return Op(invoke["process"], invoke["key"], invoke["kind"], complete.get("value", invoke["value"]), invoke["t"],
              complete["t"], complete["outcome"], invoke["expected"], complete["result"])
