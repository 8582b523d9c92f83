"""run_chaos: a LocalGrid, worker processes, a seeded fault schedule, then heal, final reads, check_all and a report."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess  # nosec B404  # chaos workers: argv lists, no shell
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spacegrid.chaos.faults import FaultInjector, available_kinds, check_kinds, plan
from spacegrid.chaos.netns import NetNamespace
from spacegrid.chaos.report import ChaosReport, fault_recovery
from spacegrid.chaos.worker import (
    COUNTER_MAP,
    REGISTER_MAP,
    counter_keys,
    register_keys,
)
from spacegrid.client.client import Client
from spacegrid.errors import ConfigError, SpacegridError
from spacegrid.codec import decode
from spacegrid.inspect import read_status
from spacegrid.launcher import LocalGrid
from spacegrid.security.access import Access
from spacegrid.store import open_store
from spacegrid.testing.apps import APP
from spacegrid.testing.checker import CheckResult, check_all
from spacegrid.testing.history import load_history

KEY_CONCURRENCY_MAX = 12  # in-flight ops per key over all workers: the checker's search grows fast beyond ~16
WORKER_GRACE_S = 15.0  # past the call deadline, before an overrunning worker is SIGKILLed
FINAL_READ_DEADLINE_S = 60.0
STARTUP_RETRIES = 3
STORE_VALUE_BYTES_MAX = 1 << 20  # a chaos value read back from the store

Progress = Callable[[str, float, float], None]  # (phase, done, total)


@dataclass
class ChaosConfig:
    """One chaos run; the seed drives the fault schedule and every worker's choices."""

    pus: int = 3
    workers: int = 4
    duration_s: float = 60.0
    seed: int = 1
    faults: tuple[str, ...] | None = None  # None: every kind the topology supports
    nats_cluster: int = 0
    data_dir: Path | None = None  # None: a temporary dir, removed after a passing run
    app: str = APP
    registers: int = 8
    counters: int = 4
    concurrency: int = 10  # tasks per worker
    rate: float = 50.0  # ops/s per worker
    call_deadline_s: float = 10.0
    tail_s: float = 5.0  # fault-free time at the end, to see the grid serve again after the last heal
    ready_timeout_s: float = 120.0
    check_time_limit_s: float = 10.0
    pu_args: list[str] = field(default_factory=list)

    def kinds(self) -> tuple[str, ...]:
        kinds = self.faults if self.faults is not None else available_kinds(self.nats_cluster)
        check_kinds(kinds, self.nats_cluster)
        return kinds

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "faults": list(self.kinds()),
                "data_dir": None if self.data_dir is None else str(self.data_dir)}


def run_chaos(config: ChaosConfig, on_progress: Progress | None = None) -> ChaosReport:
    """Run one chaos test end to end; the grid and the workers are always stopped, by PID, before it returns."""
    progress = on_progress or (lambda phase, done, total: None)
    kinds = config.kinds()
    if config.workers < 1 or config.pus < 2:
        raise ConfigError("a chaos run needs at least 1 worker and 2 PUs (one may be down at a time)")
    data_dir = config.data_dir or Path(tempfile.mkdtemp(prefix="spacegrid-chaos-"))
    history_dir = data_dir / "history"
    history_dir.mkdir(parents=True, exist_ok=True)
    report = ChaosReport(config.seed, config.to_json(), data_dir=data_dir)
    schedule = plan(config.seed, kinds, config.duration_s, config.tail_s)
    netns = NetNamespace.for_this_process() if "pu-netcut" in kinds else None
    if netns is not None:
        netns.create()  # NATS listens on its host side; one PU runs inside
    grid = LocalGrid(data_dir / "grid", config.app, pu_args=list(config.pu_args), nats_cluster=config.nats_cluster,
                     nats_host=netns.host_ip if netns is not None else "127.0.0.1")
    injector = FaultInjector(grid, netns)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        progress("starting the grid", 0, config.duration_s)
        report.startup_crashes = _start_grid(grid, config, tuple(netns.wrapper) if netns is not None else ())
        report.t0 = t0 = time.monotonic()
        workers = _start_workers(config, grid.url, history_dir, report, grid.client_access)
        deadline = t0 + config.duration_s
        injector.run(schedule, t0, deadline,
                     lambda text: progress(text, min(time.monotonic() - t0, config.duration_s), config.duration_s))
        injector.heal_all()
        progress("workers finishing", config.duration_s, config.duration_s)
        _wait_workers(workers, deadline + config.call_deadline_s + WORKER_GRACE_S)
        progress("healing", config.duration_s, config.duration_s)
        injector.heal_all()
        healed = time.monotonic()
        grid.wait_ready(config.ready_timeout_s, members=config.pus)
        report.ready_after_heal_s = time.monotonic() - healed
        progress("reading final values", config.duration_s, config.duration_s)
        finals, counters = asyncio.run(_final_values(grid, config))
        progress("checking", config.duration_s, config.duration_s)
        ops = load_history(report.history_paths)
        report.count_ops(ops)
        report.faults = injector.records
        report.recovery = [fault_recovery(record, ops) for record in injector.records]
        report.results = check_all(ops, finals, counters, config.check_time_limit_s)
        if grid.store_url is not None:
            progress("checking the store", config.duration_s, config.duration_s)
            report.results += asyncio.run(_check_store(grid, finals, counters, config.ready_timeout_s))
    except (SpacegridError, OSError) as exc:
        report.error = f"{type(exc).__name__}: {exc}"
        report.faults = injector.records
        report.recovery = [dict.fromkeys(("first_ok_s", "all_keys_s", "first_ok_after_heal_s",
                                          "all_keys_after_heal_s")) for _ in injector.records]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()  # by PID: a process this run started
                worker.wait(10)
        try:
            injector.heal_all()
        finally:
            for pu in grid.pus:  # the run is over: no graceful hand-off (it can take its whole timeout when all leave)
                pu.kill()
            grid.stop()
            if netns is not None:
                netns.destroy()
    if config.data_dir is None and report.passed:
        shutil.rmtree(data_dir, ignore_errors=True)
        report.kept_data = False
    return report


def _start_grid(grid: LocalGrid, config: ChaosConfig, cut_wrapper: tuple[str, ...]) -> list[str]:
    """One PU first (it creates the stream and buckets), then the rest, the last of them under `cut_wrapper` (inside
    the network namespace, when the run cuts links). A PU that crashes while starting is replaced, up to
    STARTUP_RETRIES times, and noted: on a fresh R3 cluster the first publish can fail (no stream response)."""
    crashes: list[str] = []
    grid.start(1)
    for members in (1, config.pus):
        while len([pu for pu in grid.pus if pu.alive()]) < members:
            last = len([pu for pu in grid.pus if pu.alive()]) == members - 1 and members > 1
            grid.add_pu(cut_wrapper if last else ())
        while True:
            try:
                grid.wait_ready(config.ready_timeout_s, members=members)
                break
            except ConfigError:
                dead = [pu for pu in grid.pus if pu.popen.poll() not in (None, 0, -9, -15)]
                if not dead or len(crashes) + len(dead) > STARTUP_RETRIES:
                    raise
                for pu in dead:
                    crashes.append(f"pu-{pu.index} exited with {pu.popen.returncode} at start-up; see {pu.log_path}")
                    grid.pus.remove(pu)
                    grid.add_pu(pu.wrapper)
    grid.write_grid_file()
    return crashes


def _start_workers(config: ChaosConfig, url: str, history_dir: Path, report: ChaosReport,
                   access: Access) -> list[subprocess.Popen[bytes]]:
    per_key = max(1, KEY_CONCURRENCY_MAX // config.workers)
    ops_max = int(config.rate * config.duration_s * 1.5) + 100 if config.rate > 0 else int(500 * config.duration_s)
    workers = []
    for index in range(config.workers):
        name = f"w{index}"
        history = history_dir / f"{name}.jsonl"
        report.history_paths.append(history)
        command = [sys.executable, "-m", "spacegrid.chaos.worker", "--nats", url, "--app", config.app,
                   "--history", str(history), "--process", name, "--seed", str(config.seed),
                   "--ops-max", str(ops_max), "--duration-s", str(config.duration_s),
                   "--concurrency", str(config.concurrency), "--registers", str(config.registers),
                   "--counters", str(config.counters), "--key-concurrency", str(per_key),
                   "--rate", str(config.rate), "--call-deadline-s", str(config.call_deadline_s)]
        history.touch()
        env = {**os.environ, **access.environment()}
        with open(history_dir / f"{name}.log", "ab") as log:
            workers.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,  # nosec B603  # argv list (sys.executable), no shell
                                            start_new_session=True, env=env))
    return workers


def _wait_workers(workers: list[subprocess.Popen[bytes]], deadline: float) -> None:
    """Wait for every worker until `deadline`, then SIGKILL (by PID) those still running."""
    for worker in workers:
        try:
            worker.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)


async def _check_store(grid: LocalGrid, registers: dict[str, Any], counters: dict[str, int],
                       timeout_s: float) -> list[CheckResult]:
    """Once write-behind has caught up (every PU reports no lag in a heartbeat sent after this check began), the
    store holds exactly the grid's final value of every key: nothing acknowledged lost on the way, nothing twice."""
    assert grid.store_url is not None
    since_s = time.time()
    deadline_s = time.monotonic() + timeout_s
    while True:
        members = (await read_status(grid.url, grid.space.name, grid.space.partitions, access=grid.access)).members.values()
        if members and all(float(info.get("beat", 0)) > since_s and info.get("write_behind_lag_records") == 0
                           for info in members):
            break
        if time.monotonic() > deadline_s:
            return [CheckResult(None, "store", None, f"write-behind did not catch up within {timeout_s}s")]
        await asyncio.sleep(0.1)
    store = open_store(grid.store_url, grid.space.name, list(grid.space.maps))
    await store.open()
    try:
        results = []
        finals = [(REGISTER_MAP, key, value) for key, value in registers.items()] + [
            (COUNTER_MAP, key, value or None) for key, value in counters.items()]  # a counter never written: absent
        for map_name, key, final in sorted(finals, key=lambda item: item[1]):
            row = await store.load_key(map_name, key)
            stored = None if row is None or row.value is None else decode(row.value, STORE_VALUE_BYTES_MAX)
            ok = stored == final
            results.append(CheckResult(ok, "store", key, "the store holds the grid's final value" if ok else
                                       f"the store holds {stored!r}, the grid {final!r}"))
        return results
    finally:
        await store.close()


async def _final_values(grid: LocalGrid, config: ChaosConfig) -> tuple[dict[str, Any], dict[str, int]]:
    """Every register's and counter's value after the heal, read with a fresh client (retried up to a deadline)."""
    async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
        registers = {key: await client.get(REGISTER_MAP, key, FINAL_READ_DEADLINE_S)
                     for key in register_keys(config.registers)}
        counters = {key: int(await client.get(COUNTER_MAP, key, FINAL_READ_DEADLINE_S) or 0)
                    for key in counter_keys(config.counters)}
    return registers, counters
