"""What the log's server keeps across its own crash, in either fsync mode (the docs/durability.md table)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest

from spacegrid.durability import Fsync
from spacegrid.engine.server import NatsServerProcess, NatsServerSpec

APPENDS = 5000


@pytest.mark.parametrize("fsync", ["always", "interval:2m"])
def test_a_sigkilled_nats_server_keeps_every_acknowledged_append(tmp_path: Path, fsync: str) -> None:
    """Appends acknowledged by JetStream are all there after SIGKILL of nats-server and a restart on its store, with
    fsync before the acknowledgement and without it (the OS holds written data when only the process dies; a power
    cut is what `interval` risks)."""
    server = NatsServerProcess(NatsServerSpec(store_dir=tmp_path / "nats", sync_interval=Fsync.parse(fsync).sync_interval))
    server.start()

    async def append() -> int:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="DURABLE", subjects=["durable.>"])
        acked = 0
        for i in range(APPENDS):
            await js.publish("durable.x", f"{i}".encode())
            acked += 1
        server.kill()  # right after the last acknowledgement
        await nc.close()
        return acked

    async def count() -> int:
        nc = await nats.connect(server.url)
        try:
            return int((await nc.jetstream().stream_info("DURABLE")).state.messages)
        finally:
            await nc.close()

    try:
        acked = asyncio.run(append())
        server.start()
        assert asyncio.run(count()) == acked == APPENDS
    finally:
        server.stop()
