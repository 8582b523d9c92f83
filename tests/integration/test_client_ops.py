"""CRUD, compare-and-set, handlers, affinity and queries through the client, against real PU processes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from spacegrid import Client, SyncClient
from spacegrid.errors import HandlerError, HandlerTimeout, InvalidKey, UnknownHandler, UnknownMap, VersionConflict
from spacegrid.examples import tickets
from spacegrid.testing.apps import APP, space
from spacegrid.testing.eventually import eventually
from spacegrid.testing.fixtures import run_with_client, running_grid


run = run_with_client


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with running_grid(tmp_path_factory.mktemp("grid"), APP) as local:
        yield local


def test_put_get_delete_round_trip(grid: Any) -> None:
    """A put is visible to get with its version; delete removes it and reports whether it existed."""

    async def body(c: Client) -> None:
        version = await c.put("kv", "a", {"x": [1, 2.5, "s", True, None, b"\x00"]})
        assert version > 0
        assert await c.get_entry("kv", "a") == ({"x": [1, 2.5, "s", True, None, b"\x00"]}, version)
        assert await c.delete("kv", "a") is True
        assert await c.get("kv", "a") is None
        assert await c.delete("kv", "a") is False

    run(grid, body)


def test_a_write_with_the_callers_op_id_applies_once_across_clients(grid: Any) -> None:
    """execute/put with an op_id of the caller's own: repeated by the same client or by a second client (a retry
    after a restart), it answers the first call's result and applies once; an op_id past WIRE_OP_ID_CHARS_MAX is
    refused before anything is sent."""
    from spacegrid.errors import RequestError
    from spacegrid.limits import WIRE_OP_ID_CHARS_MAX

    async def body(c: Client) -> None:
        assert [await c.execute("incr", "once", 3, op_id="pay-1") for _ in range(2)] == [3, 3]
        async with await Client.connect(grid.space, grid.url, access=grid.access) as second:
            assert await second.execute("incr", "once", 3, op_id="pay-1") == 3
            assert await second.execute("incr", "once", 3, op_id="pay-2") == 6
        version = await c.put("kv", "once", "a", op_id="put-1")
        assert await c.put("kv", "once", "b", op_id="put-1") == version
        assert await c.get_entry("kv", "once") == ("a", version)
        with pytest.raises(RequestError, match="op_id"):
            await c.execute("incr", "once", 3, op_id="x" * (WIRE_OP_ID_CHARS_MAX + 1))
        assert await c.get("counters", "once") == 6

    run(grid, body)


def test_versions_only_grow_across_delete_and_recreate(grid: Any) -> None:
    """Every write of a key gets a higher version, even after the key was deleted."""

    async def body(c: Client) -> None:
        v1 = await c.put("kv", "grow", 1)
        v2 = await c.put("kv", "grow", 2)
        await c.delete("kv", "grow")
        v3 = await c.put("kv", "grow", 3)
        assert v1 < v2 < v3

    run(grid, body)


def test_compare_and_set(grid: Any) -> None:
    """put with expected_version succeeds only at that version; 0 means the key must not exist."""

    async def body(c: Client) -> None:
        v1 = await c.put("kv", "cas", "first", expected_version=0)
        with pytest.raises(VersionConflict) as conflict:
            await c.put("kv", "cas", "again", expected_version=0)
        assert conflict.value.current_version == v1
        v2 = await c.put("kv", "cas", "second", expected_version=v1)
        with pytest.raises(VersionConflict):
            await c.put("kv", "cas", "stale", expected_version=v1)
        with pytest.raises(VersionConflict):
            await c.delete("kv", "cas", expected_version=v1)
        assert await c.delete("kv", "cas", expected_version=v2) is True
        assert await c.get("kv", "cas") is None

    run(grid, body)


def test_concurrent_cas_has_exactly_one_winner_per_version(grid: Any) -> None:
    """Of many concurrent compare-and-sets against one version, exactly one succeeds."""

    async def body(c: Client) -> None:
        base = await c.put("kv", "race", 0)
        results = await asyncio.gather(*(c.put("kv", "race", i, expected_version=base) for i in range(50)),
                                       return_exceptions=True)
        winners = [r for r in results if isinstance(r, int)]
        assert len(winners) == 1
        assert all(isinstance(r, VersionConflict) for r in results if not isinstance(r, int))

    run(grid, body)


def test_concurrent_handler_increments_lose_nothing(grid: Any) -> None:
    """500 concurrent increments of one counter from two clients end at exactly 500, each value returned once."""

    async def body(c: Client) -> None:
        async with await Client.connect(grid.space, grid.url, access=grid.access) as other:
            calls = [client.execute("incr", "hits") for client in (c, other) for _ in range(250)]
            returned = await asyncio.gather(*calls)
        assert sorted(returned) == list(range(1, 501))
        assert await c.get("counters", "hits") == 500

    run(grid, body)


def test_affinity_keeps_related_keys_in_one_partition_and_handler_writes_them_atomically(grid: Any) -> None:
    """Keys sharing a routing key (after '@') share a partition; a handler writes them together."""
    keys = [f"order-{i}@cust-7" for i in range(5)]
    assert len({space.partition_of("kv", key) for key in keys}) == 1

    async def body(c: Client) -> None:
        assert await c.execute("put_group", keys[0], {"keys": keys, "value": "v1"}) == keys
        values = await c.get_many("kv", keys)
        assert values == {key: "v1" for key in keys}
        versions = {(await c.get_entry("kv", key))[1] for key in keys}  # type: ignore[index]
        assert len(versions) == len(keys)

    run(grid, body)


def test_handler_touching_another_partition_is_refused_and_writes_nothing(grid: Any) -> None:
    """A handler writing a key of another partition fails whole: none of its writes land."""
    first = "solo@a"
    other = next(f"solo@{i}" for i in range(1000) if space.partition_of("kv", f"solo@{i}") != space.partition_of("kv", first))

    async def body(c: Client) -> None:
        with pytest.raises(Exception) as error:
            await c.execute("put_group", first, {"keys": [first, other], "value": "x"})
        assert "partition" in str(error.value)
        assert await c.get("kv", first) is None
        assert await c.get("kv", other) is None

    run(grid, body)


def test_bad_input_gets_clear_errors_and_the_grid_keeps_serving(grid: Any) -> None:
    """Unknown map/handler, bad keys, raising and runaway handlers, unencodable results: errors, and no write lands."""

    async def body(c: Client) -> None:
        with pytest.raises(UnknownMap):
            await c.put("nope", "k", 1)
        with pytest.raises(UnknownHandler):
            await c.execute("nope", "k")
        with pytest.raises(InvalidKey):
            await c.put("kv", "", 1)
        with pytest.raises(HandlerError, match="boom on purpose"):
            await c.execute("boom", "boomed")
        assert await c.get("kv", "boomed") is None
        with pytest.raises(HandlerTimeout):
            await c.execute("spin", "spun")
        assert await c.get("kv", "spun") is None
        with pytest.raises(Exception, match="msgpack"):
            await c.execute("unencodable", "u")
        with pytest.raises(Exception, match="exceeds the limit"):
            await c.put("kv", "huge", "x" * (300 * 1024))
        assert await c.put("kv", "after", "still serving") > 0
        assert await c.get("kv", "after") == "still serving"

    run(grid, body)


def test_query_merges_over_every_partition(grid: Any) -> None:
    """A scatter-gather query sees entries of every partition and merges them on the client."""

    async def body(c: Client) -> None:
        before = await c.query("count", "counters")
        await asyncio.gather(*(c.put("counters", f"q{i}", i) for i in range(40)))
        assert await c.query("count", "counters") == before + 40

    run(grid, body)


def test_sync_client_wraps_the_async_one(grid: Any) -> None:
    """The synchronous client performs the same calls, blocking, its change feed and continuous query included."""
    with SyncClient(grid.space, grid.url, access=grid.access) as client:
        start = client.log_position()
        version = client.put("kv", "sync", "yes")
        assert client.get_entry("kv", "sync") == ("yes", version)
        assert client.execute("incr", "sync-counter", 5) == 5
        changes = []
        for change in client.listen("counters", key="sync-counter", from_=start):
            changes.append((change.kind, change.value))
            break
        assert changes == [("put", 5)]
        with client.continuous_query("kv", where=lambda key, value: key == "sync") as view:
            view.sync()
            assert view.entries() == {"sync": "yes"}


def test_ticket_example_sells_no_seat_twice(grid_factory: Callable[..., Any]) -> None:
    """In the ticket app, concurrent reservations of overlapping seats never give one seat to two holders."""
    tickets_grid = grid_factory(pus=2)

    async def body(c: Client) -> None:
        assert await c.execute("create_event", "E1", {"seats": 20}) == {"created": True, "seats": 20}
        assert await c.execute("create_event", "E1", {"seats": 20}) == {"created": False}
        attempts = [c.execute("reserve", "E1", {"seats": [f"S{i % 20}", f"S{(i + 1) % 20}"], "holder": f"h{i}"})
                    for i in range(60)]
        results = await asyncio.gather(*attempts)
        sold = [seat for r in results if r["ok"] for seat in r["seats"]]
        assert len(sold) == len(set(sold))
        availability = await c.execute("availability", "E1")
        assert availability["sold"] == len(sold)
        seats = await c.get_many("seats", [tickets.seat_key("E1", f"S{i}") for i in range(20)])
        assert sum(1 for s in seats.values() if s["holder"] is not None) == len(sold)
        assert await c.query("sales") == {"events": 1, "sold": len(sold), "held_seats": len(sold)}

    run(tickets_grid, body)


def test_get_many_larger_than_one_message_limit(grid: Any) -> None:
    """A get_many of more keys than fit in one request message is split and answered whole."""

    async def body(c: Client) -> None:
        await asyncio.gather(*(c.put("kv", f"many-{i}", i) for i in range(50)))
        keys = [f"many-{i % 50}" if i % 100 == 0 else f"absent-{i}" for i in range(5000)]
        values = await c.get_many("kv", keys)
        assert values == {f"many-{i % 50}": i % 50 for i in range(0, 5000, 100)}

    run(grid, body)


def test_read_from_a_backup_says_how_far_behind_it_is(grid: Any) -> None:
    """A backup read returns the value the backup holds and its lag; once caught up it matches the owner."""

    async def body(c: Client) -> None:
        version = await c.put("kv", "replicated", {"v": 1})

        async def caught_up() -> None:
            read = await c.get_from_backup("kv", "replicated")
            assert (read.value, read.version, read.lag_records) == ({"v": 1}, version, 0)
            assert read.lag_s == 0.0

        await eventually(caught_up, timeout_s=10)
        absent = await c.get_from_backup("kv", "never-written")
        assert absent.value is None and absent.version is None

    run(grid, body)


def test_async_map_is_served_and_reaches_the_log(grid: Any) -> None:
    """Writes to an async map are acknowledged once applied and read back at once; their appends follow, so a
    hot backup (which applies only the log) ends up with them too."""

    async def body(c: Client) -> None:
        versions = [await c.put("cache", f"c{i}", i) for i in range(20)]
        assert all(version > 0 for version in versions)
        assert await c.get_many("cache", [f"c{i}" for i in range(20)]) == {f"c{i}": i for i in range(20)}

        async def in_the_log() -> None:
            read = await c.get_from_backup("cache", "c19")
            assert (read.value, read.lag_records) == (19, 0)

        await eventually(in_the_log, timeout_s=10)

    run(grid, body)
