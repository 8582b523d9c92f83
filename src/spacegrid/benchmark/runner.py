"""Which targets a run has and how each is set up and torn down: grids started for the run (or one running grid),
PostgreSQL with synchronous_commit on and off, Redis with appendfsync always and everysec; one after the other."""

from __future__ import annotations

import asyncio
import os
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from spacegrid.benchmark.grid_target import (
    FSYNC_ALWAYS,
    GridTarget,
    running_grid,
    started_grid,
)
from spacegrid.benchmark.gateway_target import GATEWAY_TARGETS, on_started_gateway
from spacegrid.benchmark.measure import Hooks, Progress, RunSpec, measure
from spacegrid.benchmark.pg_target import PgTarget
from spacegrid.benchmark.redis_target import RedisTarget
from spacegrid.benchmark.workload import Target
from spacegrid.errors import ConfigError

PG_ENV: Final = "SPACEGRID_BENCH_PG"
REDIS_ENV: Final = "SPACEGRID_BENCH_REDIS"
RUNNING_GRID: Final = "grid"  # the target name of a grid given by --data-dir or --nats
INTERVAL_SYNC_DEFAULT: Final = "1s"  # the grid targets without -fsync: `spacegrid up --fsync interval`'s interval
GRID_TARGETS: Final = ("grid1", "grid2", "grid1-fsync", "grid2-fsync")
PG_TARGETS: Final = {"pg-on": True, "pg-off": False}  # name -> synchronous_commit
REDIS_TARGETS: Final = {"redis-always": "always", "redis-everysec": "everysec"}
ALL_TARGETS: Final = (*GRID_TARGETS, *GATEWAY_TARGETS, *PG_TARGETS, *REDIS_TARGETS)
DEFAULT_TARGETS: Final = ("grid1", "grid1-fsync", *PG_TARGETS, *REDIS_TARGETS)
BASELINE: Final = "pg-on"  # ratios are to this target

TargetFactory = Callable[[], AbstractContextManager[Target]]


@dataclass(frozen=True)
class Sources:
    """Where the targets are: PostgreSQL and Redis URLs (None: those targets are left out), a running grid."""

    pg_url: str | None = None
    redis_url: str | None = None
    data_dir: Path | None = None
    nats_url: str | None = None
    store: str = "none"  # the started grids' store
    sync_interval: str = INTERVAL_SYNC_DEFAULT  # the started grids' without -fsync
    pg_pool_impl: str = "list"
    pg_pool_size: int | None = None  # None: one connection per request in flight
    keep: bool = False
    secure: bool = True  # the started grids: TLS and credentials, as `spacegrid up` by default

    @classmethod
    def from_env(cls, **given: Any) -> Sources:
        """PostgreSQL and Redis URLs default to $SPACEGRID_BENCH_PG and $SPACEGRID_BENCH_REDIS."""
        given["pg_url"] = given.get("pg_url") or os.environ.get(PG_ENV) or None
        given["redis_url"] = given.get("redis_url") or os.environ.get(REDIS_ENV) or None
        return cls(**given)

    @property
    def running_grid(self) -> bool:
        return self.data_dir is not None or self.nats_url is not None


def choose_targets(text: str | None, sources: Sources) -> tuple[list[str], list[str]]:
    """The targets to run, in order, and notes on those left out. Named ones must be runnable; by default those
    whose service was not given are left out, and a running grid replaces the grids the run would start."""
    if text is None:
        wanted = [RUNNING_GRID] if sources.running_grid else []
        wanted += [t for t in DEFAULT_TARGETS if not (sources.running_grid and t in GRID_TARGETS)]
        explicit = False
    else:
        wanted = [t.strip() for t in text.split(",") if t.strip()]
        explicit = True
    chosen, notes = [], []
    for name in dict.fromkeys(wanted):
        missing = _missing(name, sources)
        if missing is None:
            chosen.append(name)
        elif explicit:
            raise ConfigError(f"target {name!r}: {missing}")
        else:
            notes.append(f"{name} left out: {missing}")
    if not chosen:
        raise ConfigError("no target to run")
    return chosen, notes


def _missing(name: str, sources: Sources) -> str | None:
    if name == RUNNING_GRID:
        return None if sources.running_grid else "give the running grid by --data-dir or --nats"
    if name in GRID_TARGETS or name in GATEWAY_TARGETS:
        return "a running grid was given (--data-dir/--nats): use target 'grid'" if sources.running_grid else None
    if name in PG_TARGETS:
        return None if sources.pg_url else f"no PostgreSQL URL (--pg or ${PG_ENV})"
    if name in REDIS_TARGETS:
        return None if sources.redis_url else f"no Redis URL (--redis or ${REDIS_ENV})"
    return f"unknown; known: {', '.join((*ALL_TARGETS, RUNNING_GRID))}"


def factory(name: str, sources: Sources, spec: RunSpec) -> TargetFactory:
    """How to set up and tear down target `name` for one measured run."""
    if name == RUNNING_GRID:
        return lambda: _ready(GridTarget(running_grid(sources.data_dir, sources.nats_url), spec.events))
    if name in GRID_TARGETS:
        pus = int(name[4])
        sync_interval = FSYNC_ALWAYS if name.endswith("-fsync") else sources.sync_interval
        return lambda: on_started_grid(pus, sync_interval, sources, spec)
    if name in GATEWAY_TARGETS:  # the ticket workload over HTTP through `spacegrid gateway` on a started grid
        return lambda: on_started_gateway(int(name[-1]), sources.sync_interval, sources.store, sources.keep,
                                          sources.secure, spec.events, spec.concurrency)
    if name in PG_TARGETS:
        assert sources.pg_url is not None
        return lambda: _ready(PgTarget(sources.pg_url, spec.events, PG_TARGETS[name],
                                       sources.pg_pool_size or spec.concurrency, sources.pg_pool_impl))
    if name in REDIS_TARGETS:
        assert sources.redis_url is not None
        return lambda: _ready(RedisTarget(sources.redis_url, spec.events, REDIS_TARGETS[name], spec.concurrency))
    raise ConfigError(f"unknown target {name!r}")


@contextmanager
def _ready(target: Target) -> Iterator[Target]:
    yield target


@contextmanager
def on_started_grid(pus: int, sync_interval: str, sources: Sources, spec: RunSpec,
                     availability_by_get: bool = False) -> Iterator[Target]:
    with started_grid(pus, sync_interval, sources.store, sources.keep, sources.secure) as grid:
        yield GridTarget(grid, spec.events, availability_by_get)


def run_one(name: str, make: TargetFactory, spec: RunSpec, progress: Progress | None = None,
            hooks: Hooks | None = None) -> dict[str, Any]:
    """One target, measured and checked; a target that fails to run is a result with `error` and a failed check."""
    try:
        with make() as target:
            return asyncio.run(measure(target, spec, progress, hooks))
    except Exception as exc:  # noqa: BLE001 - reported as this target's failure; the other targets still run
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=8),
                "check": {"ok": False, "failed_checks": ["ran"]}}
