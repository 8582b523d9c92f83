"""The three ways to batch fenced log appends (issue 10, item 2; ../shared/notes/prototype.md), measured on JetStream
alone: how many records a PU's log can take per second, and what replaying one partition costs.

    .venv/bin/python bench/log_layout.py [--fsync always,interval:1s] [--records-per-tick 64,256] [--seconds 5]

Each "tick" is what one PU would append after one event-loop turn: `--records-per-tick` records of 100 B over
64 partitions, chosen at random. One tick is in flight at a time (a PU appends a partition, or its subject, only
after the previous append was acknowledged: the fence is on the last sequence), and a tick's records are
acknowledged when its appends are. Layouts:

  per-partition  one subject per partition; a tick makes one fenced append per partition it touches (all at once)
  per-pu         one subject per PU incarnation; a tick is one fenced append holding every record, partition-tagged
  atomic-batch   one subject per partition, the tick's messages in one JetStream atomic batch, each fenced
  claims         one subject per PU, fenced on the last sequence of every partition's ownership claim
                 (Nats-Expected-Last-Subject-Sequence-Subject: <stream>.claim.*), as the grid does (ADR 0009)

Replay: the time to rebuild one partition from a log of `--replay-ticks` ticks, reading its own subject
(per-partition, atomic-batch) or every record of the PU's subject and keeping that partition's (per-pu).
Loopback only; bounded by --seconds per cell; stops only the nats-server it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import nats
from nats.js import api
from rich.console import Console
from rich.table import Table

from spacegrid.durability import Fsync
from spacegrid.engine.server import NatsServerProcess, NatsServerSpec

PARTITIONS = 64
RECORD = b"x" * 100
FENCE = "Nats-Expected-Last-Subject-Sequence"
LAYOUTS = ("per-partition", "per-pu", "atomic-batch", "claims")
FENCE_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
console = Console(stderr=True)


def tick_records(rng: random.Random, count: int) -> dict[int, list[bytes]]:
    by_partition: dict[int, list[bytes]] = {}
    for _ in range(count):
        by_partition.setdefault(rng.randrange(PARTITIONS), []).append(RECORD)
    return by_partition


class Log:
    """One layout's appender over a JetStream connection; `last` holds each subject's last sequence (the fence)."""

    def __init__(self, js: Any, nc: Any, layout: str, stream: str) -> None:
        self.js, self.nc, self.layout, self.stream = js, nc, layout, stream
        self.last: dict[str, int] = {}

    def subject(self, partition: int) -> str:
        return f"{self.stream.lower()}.p.{partition}"

    async def append(self, tick: dict[int, list[bytes]]) -> int:
        """Append one tick; returns the number of JetStream appends (messages) it took."""
        if self.layout in ("per-pu", "claims"):
            subject = f"{self.stream.lower()}.pu.1"
            payload = msgpack.packb([[p, records] for p, records in tick.items()])
            if self.layout == "claims":
                claims = f"{self.stream.lower()}.claim.*"
                if claims not in self.last:  # one claim per partition, as after a grid's start
                    for partition in range(PARTITIONS):
                        self.last[claims] = (await self.js.publish(f"{self.stream.lower()}.claim.{partition}", b"c")).seq
                headers = {FENCE: str(self.last[claims]), FENCE_SUBJECT: claims}
            else:
                headers = {FENCE: str(self.last.get(subject, 0))}
            ack = await self.js.publish(subject, payload, headers=headers)
            self.last[subject] = ack.seq
            return 1
        if self.layout == "per-partition":
            subjects = [self.subject(p) for p in tick]
            acks = await asyncio.gather(*(
                self.js.publish(subject, msgpack.packb(records), headers={FENCE: str(self.last.get(subject, 0))})
                for subject, records in zip(subjects, tick.values())))
            for subject, ack in zip(subjects, acks):
                self.last[subject] = ack.seq
            return len(acks)
        return await self._atomic(tick)

    async def _atomic(self, tick: dict[int, list[bytes]]) -> int:
        """One atomic batch: every message but the last published without reply, the last one commits."""
        batch_id = f"b{random.getrandbits(48)}"
        items = list(tick.items())
        for n, (partition, records) in enumerate(items, 1):
            subject = self.subject(partition)
            headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(n), FENCE: str(self.last.get(subject, 0))}
            if n < len(items):
                await self.nc.publish(subject, msgpack.packb(records), headers=headers)
                continue
            headers["Nats-Batch-Commit"] = "1"
            reply = await self.nc.request(subject, msgpack.packb(records), headers=headers, timeout=5)
            answer = json.loads(reply.data)
            if "error" in answer:
                raise RuntimeError(f"atomic batch refused: {answer['error']}")
        # the batch's messages got consecutive stream sequences ending at the commit's
        last_seq = int(answer["seq"])
        for offset, (partition, _) in enumerate(reversed(items)):
            self.last[self.subject(partition)] = last_seq - offset
        return len(items)


async def run_cell(url: str, layout: str, records_per_tick: int, seconds: float, replay_ticks: int,
                   seed: int) -> dict[str, Any]:
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=10)
    stream = f"L{random.getrandbits(32)}"
    await js.add_stream(api.StreamConfig(name=stream, subjects=[f"{stream.lower()}.>"], storage=api.StorageType.FILE,
                                         allow_atomic=layout == "atomic-batch" or None, allow_direct=True))
    log = Log(js, nc, layout, stream)
    rng = random.Random(seed)
    latencies_s: list[float] = []
    appends = records = 0
    started_s = time.monotonic()
    while time.monotonic() - started_s < seconds:
        tick = tick_records(rng, records_per_tick)
        t0 = time.monotonic()
        appends += await log.append(tick)
        latencies_s.append(time.monotonic() - t0)
        records += records_per_tick
    elapsed_s = time.monotonic() - started_s
    while len(latencies_s) < replay_ticks:  # the replay measures a log of a known length
        await log.append(tick_records(rng, records_per_tick))
        latencies_s.append(0.0)
    replay_s, replayed = await replay_one(js, log, stream, partition=rng.randrange(PARTITIONS))
    await js.delete_stream(stream)
    await nc.close()
    measured = [x for x in latencies_s if x > 0]
    return {"layout": layout, "records_per_tick": records_per_tick, "records_per_s": round(records / elapsed_s),
            "appends_per_s": round(appends / elapsed_s), "tick_p50_ms": round(1000 * statistics.median(measured), 3),
            "tick_p99_ms": round(1000 * sorted(measured)[int(0.99 * (len(measured) - 1))], 3),
            "replay_one_partition_s": round(replay_s, 3), "replay_messages_read": replayed,
            "log_ticks": len(latencies_s), "replay_ms_per_1000_ticks": round(1e6 * replay_s / len(latencies_s), 1)}


async def replay_one(js: Any, log: Log, stream: str, partition: int) -> tuple[float, int]:
    """Read everything one partition's recovery must read, with an ordered push consumer (the grid's replay path)."""
    subject = f"{stream.lower()}.pu.1" if log.layout in ("per-pu", "claims") else log.subject(partition)
    got = 0
    done = asyncio.Event()
    total = await _count(js, stream, subject)

    async def on_message(msg: Any) -> None:
        nonlocal got
        got += 1
        if log.layout in ("per-pu", "claims"):  # keep only this partition's records
            _ = [records for p, records in msgpack.unpackb(msg.data) if p == partition]
        if got >= total:
            done.set()

    started_s = time.monotonic()
    sub = await js.subscribe(subject, stream=stream, cb=on_message, ordered_consumer=True,
                             deliver_policy=api.DeliverPolicy.ALL, pending_msgs_limit=65536,
                             pending_bytes_limit=256 * 1024 * 1024)
    if total:
        await asyncio.wait_for(done.wait(), 120)
    elapsed_s = time.monotonic() - started_s
    await sub.unsubscribe()
    return elapsed_s, got


async def _count(js: Any, stream: str, subject: str) -> int:
    info = await js.stream_info(stream, subjects_filter=subject)
    return sum(info.state.subjects.values()) if info.state.subjects else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fsync", default="always,interval:1s")
    parser.add_argument("--records-per-tick", default="64,256")
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--replay-ticks", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for fsync_text in args.fsync.split(","):
        fsync = Fsync.parse(fsync_text)
        with tempfile.TemporaryDirectory(prefix="sg-loglayout-") as tmp:
            server = NatsServerProcess(NatsServerSpec(store_dir=Path(tmp), sync_interval=fsync.sync_interval))
            server.start()
            try:
                for layout in args.layouts.split(","):
                    for per_tick in (int(n) for n in args.records_per_tick.split(",")):
                        console.print(f"{fsync.label}: {layout}, {per_tick} records per tick")
                        row = asyncio.run(run_cell(server.url, layout, per_tick, args.seconds, args.replay_ticks,
                                                   args.seed))
                        rows.append({"fsync": fsync.label, **row})
            finally:
                server.stop()
    table = Table(title=f"fenced appends of 100 B records over {PARTITIONS} partitions, one tick in flight")
    for column in ("fsync", "layout", "records/tick", "records/s", "appends/s", "tick p50 ms", "tick p99 ms",
                   "replay 1 partition, ms per 1,000 ticks of log"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row["fsync"], row["layout"], str(row["records_per_tick"]), f"{row['records_per_s']:,}",
                      f"{row['appends_per_s']:,}", f"{row['tick_p50_ms']:.2f}", f"{row['tick_p99_ms']:.2f}",
                      f"{row['replay_ms_per_1000_ticks']:,.1f}")
    Console(width=160).print(table)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
