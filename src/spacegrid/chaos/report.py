"""What a chaos run found: faults with recovery times, operation counts, and the checker's verdicts."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spacegrid.chaos.faults import FaultRecord
from spacegrid.testing.checker import CheckResult
from spacegrid.testing.history import KINDS, OUTCOMES, Op


def first_ok_after(ops: list[Op], since: float) -> float | None:
    """Seconds from `since` to the first ok op (any key) completing after it."""
    done = [op.complete_s for op in ops if op.outcome == "ok" and op.complete_s >= since]
    return min(done) - since if done else None


def all_keys_ok_after(ops: list[Op], since: float) -> float | None:
    """Seconds from `since` until every key invoked after it has an ok op invoked after it completed (the slowest key);
    None if some key never did during the run."""
    first: dict[str, float] = {}
    for op in ops:
        if op.invoke_s < since:
            continue
        best = first.get(op.key, math.inf)
        if op.outcome == "ok":
            best = min(best, op.complete_s)
        first[op.key] = best
    if not first:
        return None
    slowest = max(first.values())
    return None if math.isinf(slowest) else slowest - since


def fault_recovery(record: FaultRecord, ops: list[Op]) -> dict[str, float | None]:
    """The recovery times of one fault, from its start and from its heal."""
    healed = record.end_s
    return {
        "first_ok_s": first_ok_after(ops, record.start_s),
        "all_keys_s": all_keys_ok_after(ops, record.start_s),
        "first_ok_after_heal_s": None if healed is None else first_ok_after(ops, healed),
        "all_keys_after_heal_s": None if healed is None else all_keys_ok_after(ops, healed),
    }


def _stats(values: list[float | None]) -> dict[str, float | None]:
    known = [value for value in values if value is not None]
    return {"mean": statistics.fmean(known) if known else None, "max": max(known) if known else None,
            "unrecovered": len(values) - len(known)}


@dataclass
class ChaosReport:
    """The outcome of `run_chaos`; `passed` when the checker found no violation and did not give up."""

    seed: int
    config: dict[str, Any]
    faults: list[FaultRecord] = field(default_factory=list)
    recovery: list[dict[str, float | None]] = field(default_factory=list)
    op_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    results: list[CheckResult] = field(default_factory=list)
    history_paths: list[Path] = field(default_factory=list)
    data_dir: Path | None = None
    kept_data: bool = True
    t0: float = 0.0  # monotonic start of the load and the fault schedule
    ready_after_heal_s: float | None = None
    startup_crashes: list[str] = field(default_factory=list)  # PUs that crashed while the grid started, replaced
    error: str | None = None

    @property
    def violations(self) -> list[CheckResult]:
        return [result for result in self.results if result.ok is False]

    @property
    def unknown(self) -> list[CheckResult]:
        return [result for result in self.results if result.ok is None]

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.results) and not self.violations and not self.unknown

    @property
    def ok_ops(self) -> int:
        return sum(counts.get("ok", 0) for counts in self.op_counts.values())

    def describe_failures(self) -> str:
        """What went wrong, for an assertion message: the error, each violation with its counterexample, unknowns."""
        lines = [f"seed {self.seed}: error {self.error}"] if self.error else []
        for check in self.violations + self.unknown:
            lines.append(check.describe())
        if self.kept_data:
            lines.append(f"histories under {self.data_dir}/history")
        return "\n".join(lines) or f"seed {self.seed}: no checks ran"

    def count_ops(self, ops: list[Op]) -> None:
        counts: dict[str, dict[str, int]] = {kind: dict.fromkeys(sorted(OUTCOMES), 0) for kind in sorted(KINDS)}
        for op in ops:
            counts[op.kind][op.outcome] += 1
        self.op_counts = counts

    def faults_by_kind(self) -> dict[str, dict[str, Any]]:
        """Per fault kind: count, and mean/max of each recovery time."""
        grouped: dict[str, list[dict[str, float | None]]] = defaultdict(list)
        for record, recovery in zip(self.faults, self.recovery, strict=True):
            grouped[record.kind].append(recovery)
        return {kind: {"count": len(items), **{name: _stats([item[name] for item in items]) for name in items[0]}}
                for kind, items in sorted(grouped.items())}

    def to_json(self) -> dict[str, Any]:
        def result(check: CheckResult) -> dict[str, Any]:
            return {"ok": check.ok, "kind": check.kind, "key": check.key, "message": check.message,
                    "counterexample": [op.describe() for op in check.counterexample]}

        return {
            "passed": self.passed, "seed": self.seed, "config": self.config, "error": self.error,
            "faults_by_kind": self.faults_by_kind(),
            "faults": [{**record.to_json(), "at_s": record.start_s - self.t0,
                        "healed_at_s": None if record.end_s is None else record.end_s - self.t0, **recovery}
                       for record, recovery in zip(self.faults, self.recovery, strict=True)],
            "operations": self.op_counts, "ok_operations": self.ok_ops,
            "checks": len(self.results), "violations": [result(r) for r in self.violations],
            "unknown": [result(r) for r in self.unknown], "ready_after_heal_s": self.ready_after_heal_s,
            "startup_crashes": self.startup_crashes,
            "history": [str(path) for path in self.history_paths] if self.kept_data else [],
            "data_dir": str(self.data_dir) if self.kept_data and self.data_dir else None,
        }
