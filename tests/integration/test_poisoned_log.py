"""A log no one can poison for good (issue 11, item 3): a message the PUs can't apply stops only the partitions whose
recovery reads it, loudly and without a retry storm; `spacegrid repair` shows it and quarantines it to the
dead-letter subject with the decision, after which those partitions recover with every acknowledged value."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import nats

from spacegrid import Client
from spacegrid.engine.connection import nats_options
from spacegrid.engine.subjects import Names
from spacegrid.launcher import LocalGrid
from spacegrid.testing.apps import APP, space
from spacegrid.testing.eventually import eventually_sync

NAMES = Names(space.name)
KEYS = {f"p-{i}": i for i in range(64)}


def sg(grid: LocalGrid, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spacegrid.cli.main", *args, "--data-dir", str(grid.data_dir)],
                          capture_output=True, text=True, timeout=60, check=False)


async def _append_garbage(grid: LocalGrid) -> int:
    """What a bug or a corrupted disk could leave: bytes that are no PU log message, on a PU log subject."""
    nc = await nats.connect(grid.url, **nats_options(grid.access))
    try:
        ack = await nc.jetstream().publish(NAMES.pu_log_subject("broken-writer"), b"\xc1\x00garbage")
        return int(ack.seq)
    finally:
        await nc.close()


async def _client_op(grid: LocalGrid, body: Callable[[Client], Any]) -> Any:
    async with await Client.connect(space, grid.url, access=grid.client_access) as client:
        return await body(client)


def test_a_poisoned_message_stops_its_readers_until_repair_quarantines_it(grid_factory: Callable[..., LocalGrid]
                                                                           ) -> None:
    """Garbage on a PU log subject, then the SIGKILL of a PU: the survivor's recovery of its partitions stops at
    the garbage (reported by `spacegrid repair` with the message's sequence, tried once, not in a loop); the
    message is shown, quarantined with a reason, and the partitions recover with every acknowledged value; the
    dead letter keeps the decision."""
    grid = grid_factory(app=APP, pus=2)
    asyncio.run(_client_op(grid, lambda c: asyncio.gather(*(c.put("kv", k, v) for k, v in KEYS.items()))))
    seq = asyncio.run(_append_garbage(grid))
    victim = grid.pus[0]
    victim.signal(signal.SIGKILL)  # the survivor recovers the victim's partitions: its replay reads the garbage

    stopped: dict[str, Any] = {}

    def reported() -> None:
        done = sg(grid, "repair", "--json")
        assert done.returncode == 0, done.stderr
        found = {p: info for by_partition in json.loads(done.stdout).values() for p, info in by_partition.items()}
        assert found and all(info["seq"] == seq for info in found.values()), found
        stopped.update(found)

    eventually_sync(reported, timeout_s=30, interval_s=0.3)
    assert {info["attempts"] for info in stopped.values()} == {1}, "tried once, then waits: no retry storm"
    shown = sg(grid, "repair", "--seq", str(seq), "--json")
    assert shown.returncode == 0 and "error" in json.loads(shown.stdout)["decoded"], shown.stdout

    refused = sg(grid, "repair", "--seq", str(seq), "--quarantine")
    assert refused.returncode == 1 and "--reason" in refused.stderr
    done = sg(grid, "repair", "--seq", str(seq), "--quarantine", "--reason", "garbage from a test")
    assert done.returncode == 0, done.stderr
    decision = json.loads(done.stdout)
    assert decision["quarantined"] == seq and decision["reason"] == "garbage from a test"

    eventually_sync(lambda: _assert_all_active(grid), timeout_s=30, interval_s=0.3)
    assert asyncio.run(_client_op(grid, lambda c: c.get_many("kv", list(KEYS)))) == KEYS
    assert json.loads(sg(grid, "repair", "--json").stdout) == {member: {} for member in grid.status().members}
    headers = asyncio.run(_dead_letter_headers(grid, decision["dead_letter_seq"]))
    assert headers["Spacegrid-Reason"] == "garbage from a test" and headers["Spacegrid-Quarantined-Seq"] == str(seq)


def _assert_all_active(grid: LocalGrid) -> None:
    status = grid.status()
    assert status.ready, f"{status.active_partitions}/{status.table.partition_count} partitions active"


async def _dead_letter_headers(grid: LocalGrid, dead_seq: int) -> dict[str, str]:
    nc = await nats.connect(grid.url, **nats_options(grid.access))
    try:
        msg = await nc.jetstream().get_msg(NAMES.stream, dead_seq)
        assert msg.subject == NAMES.dead_log_subject
        return dict(msg.headers or {})
    finally:
        await nc.close()
