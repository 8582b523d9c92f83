"""Typed values (issue 13 item 4) against real PU processes: dataclasses, datetimes, Decimals, sets and tuples
through put and get, handlers, queries, backups, the store and a restart; refusals of unregistered types."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from dataclasses import dataclass
from decimal import Decimal
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import msgpack
import nats
import pytest

from spacegrid import Client, Space, codec, protocol
from spacegrid.engine.connection import nats_options
from spacegrid.engine.subjects import Names
from spacegrid.errors import DecodeError, EncodeError
from spacegrid.launcher import LocalGrid
from spacegrid.store import open_store
from spacegrid.testing.eventually import eventually
from spacegrid.testing.fixtures import run_with_client, running_grid
from spacegrid.testing.typedapp import APP, SEAT_CODE, Booking, Seat, Unregistered, define, space
from tests.integration.rawnats import collect_replies

UTC = datetime.timezone.utc
AT = datetime.datetime(2024, 6, 1, 20, 30, tzinfo=UTC)


@dataclass(frozen=True)
class OnlyOnTheClient:
    """A type the client registers and the PUs do not."""

    n: int


def booking(holder: str = "ann") -> Booking:
    return Booking(holder, AT, Decimal("49.90"), frozenset({Seat("A", 1), Seat("A", 2)}), {"vip", "late"},
                   (datetime.date(2024, 6, 1), datetime.date(2024, 6, 2)))


SAMPLES: dict[str, Any] = {
    "dataclass": Seat("B", 7),
    "datetime": AT,
    "decimal": Decimal("0.1"),
    "set": {1, 2, 3},
    "frozenset": frozenset({"x"}),
    "tuple": (1, ("nested", Decimal("2")), None),
    "uuid": uuid.UUID(int=42),
    "date": datetime.date(2024, 2, 29),
    "nested": {"when": [AT], "seats": {Seat("C", 1)}, (1, 2): "tuple key", "booking": booking()},
}


def run(grid: LocalGrid, body: Callable[[Client], Awaitable[Any]], client_space: Space | None = None) -> Any:
    return run_with_client(grid, body, client_space)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGrid]:
    with running_grid(tmp_path_factory.mktemp("typed"), APP) as local:
        yield local


def test_typed_values_round_trip_through_put_get_and_a_backup(grid: LocalGrid) -> None:
    """A dataclass, a datetime, a Decimal, a set, a frozenset, a tuple, a UUID, a date and a nest of them come back
    from get, get_entry and (once it caught up) a hot backup equal and of exactly their types."""

    async def body(c: Client) -> None:
        versions = {name: await c.put("kv", f"sample-{name}", value) for name, value in SAMPLES.items()}
        for name, value in SAMPLES.items():
            got = await c.get("kv", f"sample-{name}")
            assert got == value and type(got) is type(value), name
            assert await c.get_entry("kv", f"sample-{name}") == (value, versions[name])
        assert type((await c.get("kv", "sample-tuple"))[1]) is tuple
        assert type((await c.get("kv", "sample-nested"))["booking"].seats) is frozenset

        async def backup_has_them() -> None:
            for name, value in SAMPLES.items():
                read = await c.get_from_backup("kv", f"sample-{name}")
                assert read.value == value and type(read.value) is type(value), name

        await eventually(backup_has_them, timeout_s=20)

    run(grid, body)


def test_a_handler_receives_stores_and_returns_typed_values(grid: LocalGrid) -> None:
    """A handler's args arrive typed, what it puts and gets is typed, and its typed result comes back typed; a
    read-only handler and a second call see the stored dataclass."""

    async def body(c: Client) -> None:
        first = await c.execute("book", "show-1", booking())
        assert first == {"previous": None, "total": Decimal("99.80"), "seats": frozenset({Seat("A", 1), Seat("A", 2)}),
                         "span": (datetime.date(2024, 6, 1), datetime.date(2024, 6, 2)),
                         "seen": ["Decimal", "datetime", "frozenset", "set", "str", "tuple"]}
        second = await c.execute("book", "show-1", booking("bob"))
        assert second["previous"] == booking() and type(second["previous"]) is Booking
        assert await c.execute("describe", "show-1") == ("Booking", booking("bob"))
        assert await c.get("bookings", "show-1") == booking("bob")
        echoed = await c.execute("echo", "echo-1", {"t": (1, 2), "s": {AT}, "d": Decimal("-1.5")})
        assert echoed == {"t": (1, 2), "s": {AT}, "d": Decimal("-1.5")} and type(echoed["t"]) is tuple

    run(grid, body)


def test_a_query_merges_typed_results(grid: LocalGrid) -> None:
    """A query's per-partition results (Decimals from stored dataclasses) reach the client's merge typed."""

    async def body(c: Client) -> None:
        for i in range(5):
            await c.execute("book", f"q-{i}", Booking("q", AT, Decimal(i), frozenset(), set(), (AT.date(), AT.date())))
        totals = await c.query("totals")
        assert all(type(total) is Decimal for total in totals)
        assert {Decimal(i) for i in range(5)} <= set(totals)

    run(grid, body)


def test_unregistered_types_are_refused_and_the_pu_keeps_serving(grid: LocalGrid) -> None:
    """A put of an unregistered type or a naive datetime is refused by the client before sending (EncodeError naming
    the type); a handler returning one fails with EncodeError; the PU serves on."""

    async def body(c: Client) -> None:
        with pytest.raises(EncodeError, match=r"Unregistered is not registered on space 'typedapp'.*register_type"):
            await c.put("kv", "bad", Unregistered())
        with pytest.raises(EncodeError, match="naive datetime"):
            await c.put("kv", "bad", datetime.datetime(2024, 1, 1))
        with pytest.raises(EncodeError, match="Unregistered is not registered"):
            await c.execute("untyped", "bad")
        with pytest.raises(EncodeError, match="Unregistered is not registered"):
            await c.execute("untyped_read", "bad")
        assert await c.get("kv", "bad") is None
        await c.put("kv", "after", AT)
        assert await c.get("kv", "after") == AT

    run(grid, body)


def test_a_type_only_one_side_registered_fails_only_its_own_request(grid: LocalGrid) -> None:
    """A client that registered a type the PUs did not gets DecodeError for that put while its other requests of
    the same tick succeed; a client that did not register the PUs' types gets DecodeError reading such a value and
    plain values all the same."""

    async def ahead(c: Client) -> None:
        unknown, known = await asyncio.gather(c.put("kv", "skew-1", OnlyOnTheClient(1)), c.put("kv", "skew-2", AT),
                                              return_exceptions=True)
        assert isinstance(unknown, DecodeError) and "extension type 100 is not registered" in str(unknown)
        assert isinstance(known, int)

    run(grid, ahead, define(extra=((OnlyOnTheClient, 100),)))

    run(grid, lambda c: c.put("kv", "plain-1", {"n": 1}))
    behind = Space("typedapp", partitions=8)
    behind.map("kv")
    behind.map("bookings")

    async def body(c: Client) -> None:
        typed, plain = await asyncio.gather(c.get("kv", "skew-2"), c.get("kv", "plain-1"), return_exceptions=True)
        assert isinstance(typed, DecodeError) and "extension type 1 is not registered" in str(typed)
        assert plain == {"n": 1}

    run(grid, body, behind)


def test_an_unknown_ext_code_on_the_wire_is_refused_and_the_pu_serves_on(grid: LocalGrid) -> None:
    """A raw message with an unregistered extension code in one request gets DecodeError for that request and an
    answer for the other; a message that is one such value gets one DecodeError; the PU still serves."""
    partition = space.partition_of("kv", "wire")
    subject = Names(space.name).partition_subject(partition)  # its owner's

    def ask(data: bytes, expected: int) -> list[Any]:
        return asyncio.run(collect_replies(grid.url, subject, data, expected, access=grid.client_access))

    bad = codec.encode([1, protocol.OP_PUT, partition, "kv", "wire", msgpack.ExtType(99, b"\xc0"), None, "w-1"])
    good = protocol.request(2, protocol.OP_GET, partition, "kv", "wire")
    replies = {item[0]: item for item in ask(codec.encode_array([bad, good]), 2)}
    assert replies[1][1] == "decode" and "extension type 99 is not registered" in replies[1][2][0]
    assert replies[2][:3] == [2, protocol.OK, None]
    assert ask(msgpack.packb(msgpack.ExtType(99, b"")), 1)[0][:2] == [protocol.MALFORMED_REQ_ID, "decode"]
    assert run(grid, lambda c: c.get("kv", "sample-datetime")) == AT


def test_the_store_keeps_the_encoded_bytes(grid: LocalGrid) -> None:
    """Write-behind persists a typed value's msgpack bytes, extension codes included, which decode with the space's
    codec to the value."""
    run(grid, lambda c: c.put("kv", "stored", booking("carol")))
    assert grid.store_url is not None

    async def persisted() -> None:
        store = open_store(grid.store_url or "", space.name, list(space.maps))
        await store.open()
        try:
            row = await store.load_key("kv", "stored")
        finally:
            await store.close()
        assert row is not None and row.value is not None
        # the bytes as the PU encoded them (a set's order follows that process's string hashing, so they need not
        # equal this process's encoding): a Booking extension value, which decodes to the value
        kept = codec.decode_opaque(row.value, 1 << 20)
        assert isinstance(kept, msgpack.ExtType) and kept.code == SEAT_CODE + 1
        assert space.values.decode(row.value, 1 << 20) == booking("carol")

    asyncio.run(eventually(persisted, timeout_s=30))


async def raw_call(grid: LocalGrid, partition: int, data: bytes) -> Any:
    """Send one request message to the owner of `partition`; its reply decoded with the space's codec."""
    nc = await nats.connect(grid.url, **nats_options(grid.client_access))
    try:
        reply = await nc.request(Names(space.name).partition_subject(partition), data, timeout=5)
        return space.values.decode(reply.data, 1 << 20)
    finally:
        await nc.close()


def test_typed_values_survive_a_restart_of_every_pu(grid: LocalGrid) -> None:
    """After every PU is SIGKILLed and new ones recover from the log and the store, the typed values come back
    typed, and a retry of a handler call (its operation id again, other args) is answered with the typed result the
    replayed log remembered. (Runs last: it restarts the module's grid.)"""
    partition = space.partition_of("kv", "retried")
    first_args = {"t": (1, AT), "d": Decimal("7.25"), "seat": Seat("R", 1)}

    def call(args: Any) -> bytes:
        request = protocol.request(1, protocol.OP_EXECUTE, partition, "echo", "retried", args, None, "raw-op-1",
                                   space.values)
        return codec.encode_array([request])

    assert asyncio.run(raw_call(grid, partition, call(first_args))) == [[1, protocol.OK, first_args]]
    grid.crash_and_restart_pus()

    async def body(c: Client) -> None:
        for name, value in SAMPLES.items():
            got = await c.get("kv", f"sample-{name}")
            assert got == value and type(got) is type(value), name
        assert await c.get("bookings", "show-1") == booking("bob")
        assert await c.execute("describe", "show-1") == ("Booking", booking("bob"))

    run(grid, body)
    [[req_id, status, result]] = asyncio.run(raw_call(grid, partition, call({"other": "args"})))
    assert (req_id, status, result) == (1, protocol.OK, first_args) and type(result["t"]) is tuple
    assert run(grid, lambda c: c.get("kv", "retried")) == first_args


def test_change_feeds_and_continuous_queries_give_typed_values(grid: LocalGrid) -> None:
    """A change feed and a continuous query see the values of every sample with exactly their types."""

    async def body(c: Client) -> None:
        start = (await c.transport.log_bounds(c.names))[1]
        for name, value in SAMPLES.items():
            await c.put("kv", f"feed-{name}", value)
        seen: dict[str, Any] = {}
        async for change in c.listen("kv", from_=start):
            seen[change.key] = change.value
            if len(seen) == len(SAMPLES):
                break
        view = await c.continuous_query("kv", where=lambda key, value: key.startswith("feed-"))
        try:
            for name, value in SAMPLES.items():
                for got in (seen[f"feed-{name}"], view.entries[f"feed-{name}"]):
                    assert got == value and type(got) is type(value), name
        finally:
            await view.close()

    run(grid, body)
