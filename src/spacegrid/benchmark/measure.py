"""One measured run of one target: set-up, warm-up, the measured window (latencies, CPU of every process counted),
the workers stopped within a bound, then the invariant check against the target's final state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from spacegrid.benchmark.cpu import CLIENT, CpuSnapshot, cpu_delta
from spacegrid.benchmark.history import check, replay
from spacegrid.benchmark.workload import (
    KINDS,
    READ_KINDS,
    SEATS_PER_EVENT,
    WRITE_KINDS,
    Driver,
    Target,
    merged_ms,
    percentiles_ms,
)

PROGRESS_INTERVAL_S: Final = 0.25  # how often the progress callback is told
WORKERS_STOP_S: Final = 20.0  # after the window, workers finish their call in flight within this (> a call deadline)
SHARED: Final = "shared:"  # a process name with this prefix is shown but not in the total (other users share it)
GROUP: Final = "#"  # "pg-backend#7": summed into "pg-backend"

Progress = Callable[[float, int], None]  # (share of warm-up + window done, operations so far)


@dataclass(frozen=True)
class RunSpec:
    """How one target is measured; every target of a run gets the same."""

    events: int
    warmup_s: float
    measure_s: float
    concurrency: int
    seed: int = 1


class WindowHook(Protocol):
    """Something that runs over the measured window only (a profiler, a GC meter): its result goes into the run's."""

    async def start(self) -> None: ...
    async def stop(self) -> Any: ...


Hooks = Callable[[Target], Mapping[str, WindowHook]]  # given the opened target (its pids), the hooks to run


async def measure(target: Target, spec: RunSpec, progress: Progress | None = None,
                  hooks: Hooks | None = None) -> dict[str, Any]:
    """Open the target, load the events, run the workload, check it (unless the target says `checked = False`: a
    target with no state); the target is closed whatever happens."""
    await target.open()
    try:
        started = time.perf_counter()
        await target.create_events()
        setup_s = time.perf_counter() - started
        driver = Driver(target, spec.events, spec.seed)
        workers = [asyncio.create_task(driver.worker(w)) for w in range(spec.concurrency)]
        try:
            window = await _run_window(target, spec, driver, progress, hooks(target) if hooks else {})
        finally:
            await _stop_workers(driver, workers)
        result = {"setup_s": round(setup_s, 2), **window, **_load_figures(driver, window["measured_s"])}
        result["cpu_us_per_op"], result["cpu_cores"] = _cpu_figures(window["cpu_s"], result["ops"])
        result["target"] = target.describe()
        if not getattr(target, "checked", True):
            result["check"] = {"ok": True, "skipped": True}
            return result
        started = time.perf_counter()
        expected = replay(driver.history)
        verdict = check(expected, await target.state(expected))
        verdict["release_mismatches"] = driver.release_mismatches
        verdict["ok"] = verdict["ok"] and driver.release_mismatches == 0
        verdict["check_s"] = round(time.perf_counter() - started, 2)
        result["check"] = verdict
        result["fill_at_end"] = round(len(expected.holders) / (spec.events * SEATS_PER_EVENT), 4)
        return result
    finally:
        await target.close()


async def _run_window(target: Target, spec: RunSpec, driver: Driver, progress: Progress | None,
                      hooks: Mapping[str, WindowHook]) -> dict[str, Any]:
    total_s = spec.warmup_s + spec.measure_s
    begun = time.perf_counter()
    await _tick_until(begun + spec.warmup_s, begun, total_s, driver, progress)
    await target.window_mark("start")
    for hook in hooks.values():
        await hook.start()
    before = CpuSnapshot.take(target.pids())
    driver.measuring = True
    await _tick_until(before.wall_s + spec.measure_s, begun, total_s, driver, progress)
    driver.measuring = False
    after = CpuSnapshot.take(target.pids())
    hooked = {name: await hook.stop() for name, hook in hooks.items()}
    await target.window_mark("end")
    if progress is not None:
        progress(1.0, driver.ops_total)
    cpu = cpu_delta(before, after)
    return {"measured_s": round(cpu["elapsed_s"], 3), "cpu_s": cpu, **({"hooks": hooked} if hooked else {})}


async def _tick_until(deadline_s: float, begun_s: float, total_s: float, driver: Driver,
                      progress: Progress | None) -> None:
    """Let the workers run until deadline_s (time.perf_counter()), telling `progress` on the way."""
    while (left_s := deadline_s - time.perf_counter()) > 0:
        await asyncio.sleep(min(PROGRESS_INTERVAL_S, left_s))  # the load runs meanwhile: this is the run's clock
        if progress is not None:
            progress(min(1.0, (time.perf_counter() - begun_s) / max(total_s, 1e-9)), driver.ops_total)


async def _stop_workers(driver: Driver, workers: list[asyncio.Task[None]]) -> None:
    driver.stopping = True
    done, pending = await asyncio.wait(workers, timeout=WORKERS_STOP_S)
    for task in pending:
        task.cancel()
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]  # a bug in the driver or a target, not an operating error


def _load_figures(driver: Driver, measured_s: float) -> dict[str, Any]:
    ops = sum(driver.ops_measured)
    latency = {kind: percentiles_ms(driver.latency_s[i]) for i, kind in enumerate(KINDS)}
    latency["read"] = merged_ms([driver.latency_s[KINDS.index(kind)] for kind in READ_KINDS])
    latency["write"] = merged_ms([driver.latency_s[KINDS.index(kind)] for kind in WRITE_KINDS])
    return {"ops": ops, "ops_per_s": round(ops / measured_s, 1) if measured_s > 0 else 0.0,
            "ops_per_kind": dict(zip(KINDS, driver.ops_measured)), "latency_ms": latency,
            "errors": dict(zip(KINDS, driver.errors)), "error_samples": driver.error_samples,
            "reserve_success": round(driver.reserve_ok / max(1, driver.reserve_attempts), 4)}


def group_of(name: str) -> str:
    return name.partition(GROUP)[0]


def _cpu_figures(cpu: dict[str, Any], ops: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """CPU µs per operation and cores used, per process group; `total`: the client and every process counted."""
    seconds: dict[str, float] = {CLIENT: cpu[CLIENT]}
    for name, value in cpu["procs"].items():
        seconds[group_of(name)] = seconds.get(group_of(name), 0.0) + (value or 0.0)
    seconds["total"] = sum(v for k, v in seconds.items() if not k.startswith(SHARED))
    seconds["machine_busy"] = cpu["machine_busy"]
    elapsed_s = max(cpu["elapsed_s"], 1e-9)
    per_op = {name: (round(v / ops * 1e6, 1) if ops else None) for name, v in seconds.items()}
    cores = {name: round(v / elapsed_s, 3) for name, v in seconds.items()}
    cores["unattributed"] = round(cpu["unattributed"] / elapsed_s, 3)
    return per_op, cores
