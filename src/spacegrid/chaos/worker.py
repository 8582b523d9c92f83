"""A chaos client process: a seeded, bounded random mix of reads, writes, value CAS and increments, each recorded."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spacegrid.client.client import Client
from spacegrid.errors import SpacegridError
from spacegrid.launcher import load_space
from spacegrid.limits import Limits
from spacegrid.testing.history import HistoryWriter, Kind, outcome_of

REGISTER_MAP = "kv"
COUNTER_MAP = "counters"
# (what, weight): register reads, writes, value CAS, counter increments, counter reads
MIX: tuple[tuple[str, float], ...] = (("read", 0.30), ("write", 0.22), ("cas", 0.20), ("incr", 0.20), ("cread", 0.08))
IDLE_S = 0.02  # wait when every key is at its in-flight cap
BURST_S = 0.2
CONNECT_RETRY_S = 0.5


def register_keys(count: int) -> list[str]:
    """The register keys (map kv) of a run: r0, r1, ..."""
    return [f"r{i}" for i in range(count)]


def counter_keys(count: int) -> list[str]:
    """The counter keys (map counters) of a run: c0, c1, ..."""
    return [f"c{i}" for i in range(count)]


@dataclass(frozen=True)
class WorkerConfig:
    """One worker's bounds and key set; `key_concurrency` caps its own in-flight ops per key."""

    nats: str
    app: str
    history: Path
    process: str
    seed: int
    ops_max: int
    duration_s: float
    concurrency: int = 10
    registers: int = 8
    counters: int = 4
    key_concurrency: int = 3
    rate: float = 50.0  # ops/s started, at most; 0: unpaced
    call_deadline_s: float = 10.0


class Worker:
    """Runs `concurrency` tasks that share one op budget, one pace, one seeded RNG and per-key in-flight caps."""

    def __init__(self, config: WorkerConfig, client: Client, writer: HistoryWriter) -> None:
        self.config, self.client, self.writer = config, client, writer
        self.rng = random.Random(f"{config.seed}:{config.process}")  # nosec B311  # seeded op choice, not for secrets
        self.registers, self.counters = register_keys(config.registers), counter_keys(config.counters)
        self.in_flight: Counter[str] = Counter()
        self.next_at = 0.0  # when the pace lets the next op start
        self.last_seen: dict[str, Any] = {}  # a value this worker read or wrote recently, per register
        self.started = 0
        self.values = 0
        self.outcomes: Counter[str] = Counter()
        self.kinds, self.weights = zip(*MIX, strict=True)

    async def run(self, deadline: float) -> None:
        """Start ops until the budget or the deadline is spent, then wait for those in flight (bounded)."""
        self.next_at = time.monotonic()
        tasks = [asyncio.create_task(self._loop(deadline)) for _ in range(self.config.concurrency)]
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic())
                                           + self.config.call_deadline_s + 2.0)
        for task in pending:
            task.cancel()  # its op stays invoked without a completion: info
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self, deadline: float) -> None:
        config = self.config
        while self.started < config.ops_max and time.monotonic() < deadline:
            self.started += 1
            if config.rate > 0:  # paced; after a stall, at most BURST_S worth of ops catch up
                now = time.monotonic()
                at = max(self.next_at, now - BURST_S)
                self.next_at = at + 1 / config.rate
                await asyncio.sleep(max(0.0, at - now))
                if time.monotonic() >= deadline:
                    return
            what = self.rng.choices(self.kinds, self.weights)[0]
            key = self._pick(self.counters if what in ("incr", "cread") else self.registers)
            while key is None and time.monotonic() < deadline:
                await asyncio.sleep(IDLE_S)
                key = self._pick(self.counters if what in ("incr", "cread") else self.registers)
            if key is None:
                return
            self.in_flight[key] += 1
            try:
                await self._op(what, key)
            finally:
                self.in_flight[key] -= 1

    def _pick(self, keys: list[str]) -> str | None:
        """A random key below the per-key cap, or None if all are at it."""
        key = self.rng.choice(keys)
        if self.in_flight[key] < self.config.key_concurrency:
            return key
        free = [k for k in keys if self.in_flight[k] < self.config.key_concurrency]
        return self.rng.choice(free) if free else None

    def _unique(self) -> str:
        self.values += 1
        return f"{self.config.process}-{self.values}"

    async def _op(self, what: str, key: str) -> None:
        deadline_s = self.config.call_deadline_s
        if what in ("read", "cread"):
            handle = self.writer.invoke(key, "read")
            call: Any = self.client.get(REGISTER_MAP if what == "read" else COUNTER_MAP, key, deadline_s)
        elif what == "write":
            value = self._unique()
            handle = self.writer.invoke(key, "write", value)
            call = self.client.put(REGISTER_MAP, key, value, deadline_s=deadline_s)
        elif what == "cas":
            expected, new = self.last_seen.get(key), self._unique()
            handle = self.writer.invoke(key, "cas", new, expected=expected)
            call = self.client.execute("cas_value", key, {"expected": expected, "new": new}, deadline_s)
        else:
            handle = self.writer.invoke(key, "incr", 1)
            call = self.client.execute("incr", key, 1, deadline_s)
        try:
            result = await call
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error is recorded as an outcome
            outcome = outcome_of(exc)
            self.writer.complete(handle, outcome)
            self.outcomes[f"{handle.kind}:{outcome}"] += 1
            return
        kind: Kind = handle.kind
        if kind == "read":
            self.writer.complete(handle, "ok", value=result)
            if what == "read":
                self.last_seen[key] = result
        elif kind == "write":
            self.writer.complete(handle, "ok")
            self.last_seen[key] = handle.value
        elif kind == "cas":
            self.writer.complete(handle, "ok" if result is True else "fail")
            if result is True:
                self.last_seen[key] = handle.value
        else:
            self.writer.complete(handle, "ok", result=int(result))
        self.outcomes[f"{kind}:{'fail' if kind == 'cas' and result is not True else 'ok'}"] += 1


async def _connect(config: WorkerConfig, deadline: float) -> Client:
    space = load_space(config.app)
    limits = Limits(call_deadline_s=config.call_deadline_s, attempt_timeout_s=min(2.0, config.call_deadline_s))
    while True:
        try:
            return await Client.connect(space, config.nats, limits)
        except SpacegridError:
            if time.monotonic() + CONNECT_RETRY_S >= deadline:
                raise
            await asyncio.sleep(CONNECT_RETRY_S)


async def run_worker(config: WorkerConfig) -> dict[str, Any]:
    """Run one worker to its bounds; returns its counts (ops started, outcomes by kind)."""
    deadline = time.monotonic() + config.duration_s
    client = await _connect(config, deadline)
    try:
        with HistoryWriter(config.history, config.process) as writer:
            worker = Worker(config, client, writer)
            await worker.run(deadline)
    finally:
        try:
            await asyncio.wait_for(client.close(), 5.0)
        except Exception as exc:  # noqa: BLE001 - closing a client whose server is gone
            logging.getLogger("spacegrid.chaos").info("client close failed: %s", exc)
    return {"process": config.process, "started": worker.started, "outcomes": dict(worker.outcomes)}


def parse_args(argv: list[str] | None = None) -> WorkerConfig:
    """The command line of `python -m spacegrid.chaos.worker`."""
    parser = argparse.ArgumentParser(prog="python -m spacegrid.chaos.worker", description=__doc__)
    parser.add_argument("--nats", required=True)
    parser.add_argument("--app", default="spacegrid.testing.apps:space")
    parser.add_argument("--history", type=Path, required=True)
    parser.add_argument("--process", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--ops-max", type=int, required=True)
    parser.add_argument("--duration-s", type=float, required=True)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--registers", type=int, default=8)
    parser.add_argument("--counters", type=int, default=4)
    parser.add_argument("--key-concurrency", type=int, default=3, help="in-flight ops per key, this worker")
    parser.add_argument("--rate", type=float, default=50.0, help="ops/s started at most (0: unpaced)")
    parser.add_argument("--call-deadline-s", type=float, default=10.0)
    a = parser.parse_args(argv)
    if min(a.ops_max, a.concurrency, a.registers, a.counters, a.key_concurrency) < 1 or a.duration_s <= 0:
        parser.error("counts must be >= 1 and --duration-s > 0")
    return WorkerConfig(a.nats, a.app, a.history, a.process, a.seed, a.ops_max, a.duration_s, a.concurrency,
                        a.registers, a.counters, a.key_concurrency, a.rate, a.call_deadline_s)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = asyncio.run(run_worker(parse_args(argv)))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    sys.exit(main())
