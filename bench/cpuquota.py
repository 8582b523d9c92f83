"""CPU quotas for benchmarks: one cgroup per process group with a fixed share of a core (cgroup v1
cpu.cfs_quota_us / cpu.cfs_period_us where the cpu controller is mounted as v1, else v2 cpu.max), created under one
parent named after this process and removed at the end, also on failure (the processes moved back first)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self

V1_ROOT: Final = Path("/sys/fs/cgroup/cpu")
V2_ROOT: Final = Path("/sys/fs/cgroup")
PERIOD_US: Final = 100_000
PARENT_PREFIX: Final = "spacegrid-bench-"
REMOVE_TRIES: Final = 50  # rmdir of a group whose last task is still exiting: retried, 20 ms apart
REMOVE_PAUSE_S: Final = 0.02
GROUPS_MAX: Final = 64


class QuotaUnavailable(RuntimeError):
    """No cgroup cpu controller this process may write (not root, or neither v1 nor v2 cpu mounted)."""


def detect() -> tuple[str, Path]:
    """("v1", /sys/fs/cgroup/cpu) or ("v2", the v2 root with the cpu controller)."""
    if (V1_ROOT / "cpu.cfs_quota_us").exists():
        return "v1", V1_ROOT
    controllers = V2_ROOT / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return "v2", V2_ROOT
    raise QuotaUnavailable("no cgroup cpu controller: neither /sys/fs/cgroup/cpu (v1) nor cpu in "
                           "/sys/fs/cgroup/cgroup.controllers (v2)")


@dataclass(frozen=True)
class ThrottleStats:
    """From cpu.stat: enforcement periods, periods in which the group ran out of quota, time it was held back."""

    periods: int
    throttled: int
    throttled_s: float

    def minus(self, earlier: ThrottleStats) -> ThrottleStats:
        return ThrottleStats(self.periods - earlier.periods, self.throttled - earlier.throttled,
                             self.throttled_s - earlier.throttled_s)


class CpuGroup:
    """One cgroup: a quota in cores (None: unlimited), the processes written into it."""

    def __init__(self, version: str, path: Path) -> None:
        self.version = version
        self.path = path

    def set_quota(self, cores: float | None) -> None:
        quota_us = -1 if cores is None else max(1000, round(cores * PERIOD_US))
        if self.version == "v1":
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota_us))
        else:
            (self.path / "cpu.max").write_text(f"{'max' if quota_us < 0 else quota_us} {PERIOD_US}")

    def quota_cores(self) -> float | None:
        if self.version == "v1":
            quota = int((self.path / "cpu.cfs_quota_us").read_text())
            period = int((self.path / "cpu.cfs_period_us").read_text())
        else:
            text_quota, text_period = (self.path / "cpu.max").read_text().split()
            quota, period = (-1 if text_quota == "max" else int(text_quota)), int(text_period)
        return None if quota < 0 else quota / period

    def add(self, pid: int) -> None:
        """The whole process (every thread) into this group."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        return [int(line) for line in (self.path / "cgroup.procs").read_text().split()]

    def throttling(self) -> ThrottleStats:
        fields = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line.strip())
        if self.version == "v1":
            return ThrottleStats(int(fields.get("nr_periods", 0)), int(fields.get("nr_throttled", 0)),
                                 int(fields.get("throttled_time", 0)) / 1e9)
        return ThrottleStats(int(fields.get("nr_periods", 0)), int(fields.get("nr_throttled", 0)),
                             int(fields.get("throttled_usec", 0)) / 1e6)


class CpuGroups:
    """The cgroups of one benchmark run, under PARENT_PREFIX<pid>; `with CpuGroups() as groups:` removes them all
    at the end, whatever happened (processes still in them are moved back to the root group first)."""

    def __init__(self) -> None:
        self.version, self.root = detect()
        if not os.access(self.root, os.W_OK):
            raise QuotaUnavailable(f"{self.root} is not writable: run as root")
        self.parent = self.root / f"{PARENT_PREFIX}{os.getpid()}"
        self.groups: dict[str, CpuGroup] = {}

    def __enter__(self) -> Self:
        self.parent.mkdir(exist_ok=False)
        if self.version == "v2":
            _enable_cpu(self.root)
            _enable_cpu(self.parent)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove_all()

    def group(self, name: str, cores: float | None) -> CpuGroup:
        """A new group (or the one of that name, its quota set anew)."""
        found = self.groups.get(name)
        if found is None:
            assert len(self.groups) < GROUPS_MAX, "a bounded number of groups per run"
            path = self.parent / name
            path.mkdir()
            found = self.groups[name] = CpuGroup(self.version, path)
        found.set_quota(cores)
        return found

    def remove(self, name: str) -> None:
        group = self.groups.pop(name, None)
        if group is not None:
            _remove(group.path, self.root)

    def remove_all(self) -> None:
        for name in list(self.groups):
            self.remove(name)
        if self.parent.exists():
            _remove(self.parent, self.root)


def _enable_cpu(path: Path) -> None:
    control = path / "cgroup.subtree_control"
    if "cpu" not in control.read_text().split():
        control.write_text("+cpu")


def _remove(path: Path, root: Path) -> None:
    """Move whatever still runs in the group to the root group, then rmdir (retried while tasks exit)."""
    for attempt in range(REMOVE_TRIES):
        try:
            for line in (path / "cgroup.procs").read_text().split():
                try:
                    (root / "cgroup.procs").write_text(line)
                except OSError:  # exited meanwhile
                    pass
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if attempt == REMOVE_TRIES - 1:
                raise
            time.sleep(REMOVE_PAUSE_S)  # a task leaving the group: the kernel lets go of it within milliseconds


def remove_stale() -> list[str]:
    """Remove groups a previous run left behind (its process gone); returns their names."""
    try:
        _, root = detect()
    except QuotaUnavailable:
        return []
    removed = []
    for parent in sorted(root.glob(f"{PARENT_PREFIX}*"))[:GROUPS_MAX]:
        owner = parent.name.removeprefix(PARENT_PREFIX)
        if owner.isdigit() and Path(f"/proc/{owner}").exists():
            continue
        for child in [p for p in parent.iterdir() if p.is_dir()][:GROUPS_MAX]:
            _remove(child, root)
        _remove(parent, root)
        removed.append(parent.name)
    return removed


