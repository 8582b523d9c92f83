"""A deleted log stream (issue 11, item 3): the PUs say so, refuse writes and keep serving reads; `spacegrid repair
--recreate-log` recreates it once the store holds every acknowledged write (or, where it can't, only when the
operator accepts the loss); the grid then takes writes again and a PU's loss afterwards loses nothing acknowledged.
A PU never starts a new empty log in place of a deleted one."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import nats
import pytest

from spacegrid import Client
from spacegrid.engine.connection import nats_options
from spacegrid.engine.subjects import Names
from spacegrid.errors import GridTimeout, LogMissing
from spacegrid.launcher import DEFAULT_APP, LocalGrid
from spacegrid.testing.apps import APP
from spacegrid.testing.eventually import eventually, eventually_sync

BEFORE = {f"before-{i}": i for i in range(40)}
AFTER = {f"after-{i}": i for i in range(40)}


def sg(grid: LocalGrid, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spacegrid.cli.main", *args, "--data-dir", str(grid.data_dir)],
                          capture_output=True, text=True, timeout=120, check=False)


async def _delete_log(grid: LocalGrid) -> int:
    """What an operator's mistake does (only the admin credential may delete a stream); returns its last sequence."""
    stream = Names(grid.space.name).stream
    nc = await nats.connect(grid.url, **nats_options(grid.access))
    try:
        last_seq = int((await nc.jetstream().stream_info(stream)).state.last_seq)
        await nc.jetstream().delete_stream(stream)
        return last_seq
    finally:
        await nc.close()


async def _client(grid: LocalGrid, body: Callable[[Client], Any]) -> Any:
    async with await Client.connect(grid.space, grid.url, access=grid.client_access) as client:
        return await body(client)


def _put_all(map_name: str, values: dict[str, int]) -> Callable[[Client], Any]:
    return lambda client: asyncio.gather(*(client.put(map_name, k, v) for k, v in values.items()))


def _get_all(map_name: str, keys: list[str]) -> Callable[[Client], Any]:
    return lambda client: client.get_many(map_name, keys)


def _refused_then_read(map_name: str) -> Callable[[Client], Any]:
    """Once the PUs have seen the log missing: a write is refused with LogMissing, and every value still reads."""
    return lambda client: _refused_then_read_with(client, map_name)


async def _refused_then_read_with(client: Client, map_name: str) -> dict[str, Any]:
    async def refused() -> None:
        try:
            await client.put(map_name, "during", 1, deadline_s=0.5)
        except LogMissing as exc:
            assert "--recreate-log" in str(exc), exc
            return
        except GridTimeout as exc:  # sent before its PU looked: it waits for the log, unanswered
            raise AssertionError("the PU has not seen the log missing yet") from exc
        raise AssertionError("a write was taken while the log is missing")

    await eventually(refused, timeout_s=20, interval_s=0.2)
    return dict(await client.get_many(map_name, list(BEFORE)))


def _all_served(grid: LocalGrid, members: int) -> None:
    status = grid.status()
    assert len(status.members) == members and status.ready, status.active_partitions


def test_a_deleted_log_is_recreated_once_the_store_holds_every_acknowledged_write(
        grid_factory: Callable[..., LocalGrid]) -> None:
    """Writes, then the log stream deleted: writes are refused with LogMissing naming the repair, reads answer every
    value; `repair --recreate-log` recreates it without loss (none to accept) above the old positions; writes are
    taken again; then a PU is SIGKILLed and the survivor recovers its partitions from the store and the new log with
    every acknowledged value."""
    grid = grid_factory(app=APP, pus=2)
    asyncio.run(_client(grid, _put_all("kv", BEFORE)))
    last_seq = asyncio.run(_delete_log(grid))
    assert asyncio.run(_client(grid, _refused_then_read("kv"))) == BEFORE

    done = sg(grid, "repair", "--recreate-log", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["losses"] == [] and result["first_seq"] > last_seq and len(result["members"]) == 2, result

    asyncio.run(_client(grid, _put_all("kv", AFTER)))
    grid.pus[0].signal(signal.SIGKILL)
    eventually_sync(lambda: _all_served(grid, 1), timeout_s=60, interval_s=0.3)
    assert asyncio.run(_client(grid, _get_all("kv", [*BEFORE, *AFTER]))) == {**BEFORE, **AFTER}


def test_without_a_store_recreating_the_log_needs_the_loss_accepted(grid_factory: Callable[..., LocalGrid]) -> None:
    """A grid with no store: the recreated log can't hold what the deleted one did, so `repair --recreate-log` is
    refused with what would be lost and how to go ahead; with --accept-data-loss it recreates the log, says what
    is at risk, and the PUs (whose memory holds every value) take writes again."""
    grid = grid_factory(app=DEFAULT_APP, pus=2, store="none")
    asyncio.run(_client(grid, _put_all("seats", BEFORE)))
    asyncio.run(_delete_log(grid))
    assert asyncio.run(_client(grid, _refused_then_read("seats"))) == BEFORE

    refused = sg(grid, "repair", "--recreate-log")
    assert refused.returncode == 1 and "--accept-data-loss" in refused.stdout + refused.stderr, refused
    done = sg(grid, "repair", "--recreate-log", "--accept-data-loss", "--json")
    assert done.returncode == 0, done.stderr
    assert "no store" in json.loads(done.stdout)["losses"][0]
    asyncio.run(_client(grid, _put_all("seats", AFTER)))
    assert asyncio.run(_client(grid, _get_all("seats", [*BEFORE, *AFTER]))) == {**BEFORE, **AFTER}


def test_a_pu_does_not_start_a_new_log_in_place_of_a_deleted_one(grid_factory: Callable[..., LocalGrid]) -> None:
    """A PU started on a grid that has a partition table but no log stream exits with LogMissing naming the repair,
    and the stream stays missing (a new log from sequence 1 would sit under the store's positions)."""
    grid = grid_factory(app=APP, pus=1)
    asyncio.run(_delete_log(grid))
    late = grid.add_pu()
    try:
        late.popen.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the PU kept running on a grid without its log")
    assert late.popen.returncode != 0
    assert "--recreate-log" in late.log_path.read_text()
    assert asyncio.run(_stream_exists(grid)) is False


async def _stream_exists(grid: LocalGrid) -> bool:
    nc = await nats.connect(grid.url, **nats_options(grid.access))
    try:
        await nc.jetstream().stream_info(Names(grid.space.name).stream)
        return True
    except nats.js.errors.NotFoundError:
        return False
    finally:
        await nc.close()
