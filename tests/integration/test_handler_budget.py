"""User code can not take a PU down (issue 11, item 4): handler code has a time budget per call and per event-loop
tick, so one message of many looping handler calls holds a PU's loop for about one limit, not one per call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from spacegrid import codec, protocol
from spacegrid.engine.subjects import Names
from spacegrid.launcher import LocalGrid
from spacegrid.testing.apps import APP, space
from tests.integration.rawnats import collect_replies

SPINS = 4  # at 0.5 s each (TEST_PU_ARGS) without a per-tick budget: 2.5 s of a frozen loop, past the 1.5 s timeout


def test_one_message_of_looping_handlers_is_stopped_within_one_budget_and_the_pu_stays(
        grid_factory: Callable[..., LocalGrid]) -> None:
    """Four calls of a handler that never returns, in one message to one PU: every one is answered, HandlerTimeout
    (stopped) or Overloaded (not run: the message's budget was spent; a client retries it), none of their writes
    exists, and the PU is not declared dead: the members and the partition table are the same afterwards."""
    grid = grid_factory(app=APP, pus=2)
    before = grid.status()
    target = sorted(before.members)[0]
    owned = before.table.owned_by(target)
    keys: list[tuple[int, str]] = []
    i = 0
    while len(keys) < SPINS:
        key = f"spin-{i}"
        if space.partition_of("kv", key) in owned:
            keys.append((space.partition_of("kv", key), key))
        i += 1
    message = codec.encode_array([protocol.request(n + 1, protocol.OP_EXECUTE, p, "spin", key, None, None, f"op-{n}")
                                  for n, (p, key) in enumerate(keys)])
    replies = asyncio.run(collect_replies(grid.url, Names(space.name).pu_subject(target), message, SPINS, 15.0,
                                          access=grid.client_access))
    assert sorted(reply[0] for reply in replies) == list(range(1, SPINS + 1))
    codes = [reply[1] for reply in replies]
    assert "handler_timeout" in codes and set(codes) <= {"handler_timeout", "overloaded"}, replies

    async def read_back() -> dict[str, Any]:
        from spacegrid import Client

        async with await Client.connect(space, grid.url, access=grid.client_access) as client:
            return await client.get_many("kv", [key for _, key in keys])

    assert asyncio.run(read_back()) == {}
    after = grid.status()
    assert set(after.members) == set(before.members), "no PU was declared dead"
    assert after.table.owners == before.table.owners and after.table.epochs == before.table.epochs


def test_heartbeats_go_on_while_handler_code_holds_the_loop_past_the_heartbeat_timeout(
        grid_factory: Callable[..., LocalGrid]) -> None:
    """With a handler time limit (2 s) above the heartbeat timeout (1.5 s), one looping handler holds its PU's
    event loop for about 2 s: its liveness thread keeps renewing the member record, so it is not declared dead
    (members, owners and epochs unchanged), and it serves again afterwards."""
    grid = grid_factory(app=APP, pus=2, pu_args=["--handler-time-limit-s", "2"])
    before = grid.status()
    target = sorted(before.members)[0]
    partition = before.table.owned_by(target)[0]
    key = next(f"hold-{i}" for i in range(10_000) if space.partition_of("kv", f"hold-{i}") == partition)
    message = codec.encode_array([protocol.request(1, protocol.OP_EXECUTE, partition, "spin", key, None, None, "op")])
    replies = asyncio.run(collect_replies(grid.url, Names(space.name).pu_subject(target), message, 1, 15.0,
                                          access=grid.client_access))
    assert replies[0][1] == "handler_timeout"
    after = grid.status()
    assert set(after.members) == set(before.members), "the PU was not declared dead"
    assert after.table.owners == before.table.owners and after.table.epochs == before.table.epochs

    async def still_serving() -> Any:
        from spacegrid import Client

        async with await Client.connect(space, grid.url, access=grid.client_access) as client:
            await client.put("kv", key, "after")
            return await client.get("kv", key)

    assert asyncio.run(still_serving()) == "after"
