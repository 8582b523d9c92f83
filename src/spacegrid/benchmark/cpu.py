"""CPU accounting from /proc: per process (utime + stime), the whole machine's busy time, snapshots and deltas."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Final

CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
QUIET_WINDOW_S: Final = 1.0  # wait_quiet measures the machine over windows this long
QUIET_BUSY_CORES_MAX: Final = 0.15  # ...and calls it idle below this many busy cores
CLIENT: Final = "client"  # this process, measured by time.process_time()


def proc_cpu_split_s(pid: int) -> tuple[float, float] | None:
    """(utime, stime) of one process, in seconds (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLK_TCK


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds of this process, of the given processes (None: gone) and of the machine, at one instant."""

    wall_s: float
    client_s: float
    procs: dict[str, float | None]
    machine_s: float
    system_s: dict[str, float | None]  # the kernel's share (stime) of each, the client's included

    @classmethod
    def take(cls, pids: dict[str, int]) -> CpuSnapshot:
        splits = {name: proc_cpu_split_s(pid) for name, pid in {CLIENT: os.getpid(), **pids}.items()}
        return cls(time.perf_counter(), time.process_time(),
                   {name: None if split is None else split[0] + split[1] for name, split in splits.items()
                    if name != CLIENT},
                   machine_busy_s(),
                   {name: None if split is None else split[1] for name, split in splits.items()})


def _minus(b: float | None, a: float | None) -> float | None:
    return None if a is None or b is None else b - a


def cpu_delta(a: CpuSnapshot, b: CpuSnapshot) -> dict[str, Any]:
    """CPU seconds spent between two snapshots: the client, each process, the machine, and what no process we
    measure accounts for ("unattributed": other load, kernel threads)."""
    procs = {name: _minus(b.procs.get(name), value) for name, value in a.procs.items()}
    attributed = (b.client_s - a.client_s) + sum(v for v in procs.values() if v is not None)
    machine = b.machine_s - a.machine_s
    system = {name: _minus(b.system_s.get(name), value) for name, value in a.system_s.items()}
    return {CLIENT: b.client_s - a.client_s, "procs": procs, "machine_busy": machine,
            "unattributed": machine - attributed, "system_part": system, "elapsed_s": b.wall_s - a.wall_s}


def wait_quiet(max_wait_s: float, busy_max_cores: float = QUIET_BUSY_CORES_MAX) -> float:
    """Wait (at most max_wait_s) until the machine is nearly idle over one window; the last window's busy cores."""
    deadline = time.monotonic() + max_wait_s
    while True:
        a = machine_busy_s()
        time.sleep(QUIET_WINDOW_S)  # a measuring window, not ordering: the machine's load is what is read
        busy = (machine_busy_s() - a) / QUIET_WINDOW_S
        if busy <= busy_max_cores or time.monotonic() >= deadline:
            return round(busy, 3)
        print(f"  machine busy ({busy:.2f} cores used by other processes); waiting for quiet ...", file=sys.stderr,
              flush=True)
