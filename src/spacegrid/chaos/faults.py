"""Seeded fault schedules, and their injection into the processes of one LocalGrid (by PID, never by name)."""

from __future__ import annotations

import functools
import random
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from spacegrid.chaos.netns import NetNamespace, netns_usable
from spacegrid.errors import ConfigError
from spacegrid.launcher import LocalGrid, PuProcess

PU_KINDS = ("pu-kill", "pu-pause")
NATS_KINDS = ("nats-kill", "nats-pause")
NET_KINDS = ("pu-netcut",)  # one PU lives in a network namespace; the fault cuts its link to NATS
FAULT_KINDS = PU_KINDS + NATS_KINDS + NET_KINDS
# how long a fault lasts before it is healed (s): the delay before a replacement PU, a pause, a NATS node's
# downtime, a cut (shorter or longer than the heartbeat timeout: declared dead or not)
HOLD_S: dict[str, tuple[float, float]] = {
    "pu-kill": (1.0, 4.0), "pu-pause": (1.0, 4.0), "nats-kill": (2.0, 5.0), "nats-pause": (1.0, 4.0),
    "pu-netcut": (1.0, 5.0)}
GAP_S = (2.0, 5.0)  # quiet time between one fault's heal and the next fault
FIRST_S = (2.0, 3.0)  # quiet time before the first fault, while the workers connect
NATS_START_TIMEOUT_S = 30.0
MIN_GAP_S = 1.0  # after a heal that took longer than planned (a NATS node's restart)
STEP_S = 0.1


def available_kinds(nats_cluster: int) -> tuple[str, ...]:
    """The fault kinds a topology and this machine support: NATS node faults only on a cluster (a quorum survives
    one node), network cuts only where this process can create network namespaces."""
    kinds = PU_KINDS + (NATS_KINDS if nats_cluster >= 3 else ())
    return kinds + (NET_KINDS if _netns_problem() is None else ())


@functools.cache
def _netns_problem() -> str | None:
    return netns_usable()


def check_kinds(kinds: tuple[str, ...], nats_cluster: int) -> None:
    """ConfigError for an unknown kind or one the topology does not support."""
    unknown = [kind for kind in kinds if kind not in FAULT_KINDS]
    if unknown or not kinds:
        raise ConfigError(f"fault kinds are {', '.join(FAULT_KINDS)}; got {', '.join(kinds) or 'none'}")
    if "pu-netcut" in kinds and _netns_problem() is not None:
        raise ConfigError(f"pu-netcut: {_netns_problem()}")
    unsupported = [kind for kind in kinds if kind not in available_kinds(nats_cluster)]
    if unsupported:
        raise ConfigError(f"fault kinds {', '.join(unsupported)} need a 3-node NATS cluster (--nats-cluster 3)")


@dataclass(frozen=True)
class PlannedFault:
    """One fault of a schedule: when (s after the run's start), what, which target (a fraction), for how long."""

    at_s: float
    kind: str
    target: float  # in [0, 1): picks among the candidates alive at injection time, in a stable order
    hold_s: float


def plan(seed: int, kinds: tuple[str, ...], duration_s: float, tail_s: float) -> list[PlannedFault]:
    """One fault at a time, each healed at least `tail_s` before the end; the same seed gives the same schedule."""
    rng = random.Random(seed)  # nosec B311  # seeded fault schedule, not for secrets
    faults: list[PlannedFault] = []
    at = rng.uniform(*FIRST_S)
    while True:
        kind = rng.choice(sorted(kinds))
        hold = round(rng.uniform(*HOLD_S[kind]), 3)
        if at + hold + tail_s > duration_s:
            return faults
        faults.append(PlannedFault(round(at, 3), kind, rng.random(), hold))
        at += hold + rng.uniform(*GAP_S)


@dataclass
class FaultRecord:
    """An injected fault: monotonic start and end (heal completed), the process hit, and any trouble healing it."""

    kind: str
    target: str
    pid: int
    start_s: float
    end_s: float | None = None
    planned: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class FaultInjector:
    """Injects planned faults into `grid` one at a time and heals them; `heal_all` undoes whatever is still active."""

    def __init__(self, grid: LocalGrid, netns: NetNamespace | None = None) -> None:
        self.grid = grid
        self.netns = netns  # where the PU that pu-netcut cuts off lives
        self.records: list[FaultRecord] = []
        self._active: list[tuple[FaultRecord, Callable[[], str]]] = []

    def run(self, schedule: list[PlannedFault], t0: float, deadline: float,
            on_tick: Callable[[str], None] = lambda text: None) -> None:
        """Follow the schedule from `t0` (monotonic), returning by `deadline`; each fault is healed after its hold."""
        healed = t0
        for planned in schedule:
            if not self._sleep_until(max(t0 + planned.at_s, healed + MIN_GAP_S), deadline, on_tick, "quiet"):
                return
            record = self.inject(planned)
            on_tick(f"{record.kind} {record.target}")
            if not self._sleep_until(time.monotonic() + planned.hold_s, deadline, on_tick, record.kind):
                return
            self.heal_all()
            healed = time.monotonic()
        self._sleep_until(deadline, deadline, on_tick, "quiet")

    def inject(self, planned: PlannedFault) -> FaultRecord:
        """Start one fault now and remember how to heal it."""
        kind = planned.kind
        if kind in PU_KINDS:
            pus = sorted((pu for pu in self.grid.pus if pu.alive()), key=lambda pu: pu.index)
            if not pus:
                raise ConfigError("no live PU to inject a fault into")
            pu = pus[int(planned.target * len(pus))]
            record = FaultRecord(kind, f"pu-{pu.index}", pu.pid, time.monotonic(), planned=asdict(planned))
            if kind == "pu-kill":
                pu.kill()
                heal = self._replace_pu(pu)
            else:
                pu.signal(signal.SIGSTOP)
                heal = self._resume_pu(pu)
        elif kind in NET_KINDS:
            netns = self.netns
            inside = [pu for pu in self.grid.pus if pu.alive() and netns is not None and pu.wrapper == tuple(netns.wrapper)]
            if netns is None or not inside:
                raise ConfigError("pu-netcut needs a live PU in the run's network namespace")
            pu = inside[0]
            record = FaultRecord(kind, f"pu-{pu.index}", pu.pid, time.monotonic(), planned=asdict(planned))
            netns.cut()
            heal = self._reconnect(netns)
        else:
            nodes = [node for node in self.grid.nats_nodes if node.is_running()]
            if len(nodes) < len(self.grid.nats_nodes) or len(nodes) < 3:
                raise ConfigError("NATS faults need a 3-node cluster with every node up")
            node = nodes[int(planned.target * len(nodes))]
            record = FaultRecord(kind, node.spec.server_name, node.pid, time.monotonic(), planned=asdict(planned))
            if kind == "nats-kill":
                node.kill()
                heal = self._restart_node(node)
            else:
                node.pause()
                heal = self._resume_node(node)
        self.records.append(record)
        self._active.append((record, heal))
        return record

    def heal_all(self) -> None:
        """Heal every active fault (a failed heal is noted on its record and retried on the next call)."""
        still: list[tuple[FaultRecord, Callable[[], str]]] = []
        for record, heal in self._active:
            try:
                record.note = heal()
                record.end_s = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - noted, retried by the next heal_all
                record.note = f"heal failed: {exc}"
                still.append((record, heal))
        self._active = still

    def _replace_pu(self, dead: PuProcess) -> Callable[[], str]:
        def heal() -> str:
            pu = self.grid.add_pu(dead.wrapper)  # in the same network namespace, if it lived in one
            self.grid.write_grid_file()
            return f"replaced by pu-{pu.index} (pid {pu.pid})"
        return heal

    @staticmethod
    def _reconnect(netns: NetNamespace) -> Callable[[], str]:
        def heal() -> str:
            netns.heal()
            return "link restored"
        return heal

    @staticmethod
    def _resume_pu(pu: PuProcess) -> Callable[[], str]:
        def heal() -> str:
            pu.signal(signal.SIGCONT)
            return "resumed"
        return heal

    def _restart_node(self, node: Any) -> Callable[[], str]:
        def heal() -> str:
            node.start(NATS_START_TIMEOUT_S)
            self.grid.write_grid_file()
            return f"restarted (pid {node.pid})"
        return heal

    @staticmethod
    def _resume_node(node: Any) -> Callable[[], str]:
        def heal() -> str:
            node.resume()
            return "resumed"
        return heal

    @staticmethod
    def _sleep_until(when: float, deadline: float, on_tick: Callable[[str], None], text: str) -> bool:
        """Sleep in short steps until `when`; False if `deadline` came first."""
        while True:
            now = time.monotonic()
            if now >= deadline:
                return False
            if now >= when:
                return True
            on_tick(text)
            time.sleep(min(STEP_S, when - now, deadline - now))
