"""Coordination in JetStream KV (engine/coordination.py) against a real nats-server: member records registered,
renewed, left and removed by compare-and-set (the removal a message delete at the revision seen), the partition
table written by compare-and-set, and watches."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from spacegrid import codec
from spacegrid.engine.connection import connect
from spacegrid.engine.coordination import Coordination
from spacegrid.engine.subjects import Names
from spacegrid.errors import ConfigError, GridUnavailable
from spacegrid.partitioning import PartitionTable
from spacegrid.testing.eventually import eventually

NAMES = Names("co")
PARTITIONS = 4


@asynccontextmanager
async def opened(url: str, create: bool = True) -> AsyncIterator[Coordination]:
    """Coordination for NAMES on a raw connection (creating its buckets unless create is False)."""
    nc = await connect(url, "test-coordination")
    try:
        yield await Coordination.open(nc.jetstream(), NAMES, create=create)
    finally:
        await nc.close()


def run(main: Callable[[], Awaitable[None]], timeout_s: float = 30.0) -> None:
    asyncio.run(asyncio.wait_for(main(), timeout_s))


def table_v1() -> PartitionTable:
    return PartitionTable.empty(PARTITIONS).successor(("a", "a", "b", "b"), (("b",), ("b",), ("a",), ("a",)))


def test_opening_without_create_fails_until_the_buckets_exist(nats_url: str) -> None:
    """Opening with create=False before any PU created the space's buckets raises GridUnavailable; once they
    were created, it opens them."""

    async def main() -> None:
        with pytest.raises(GridUnavailable, match="does not exist"):
            async with opened(nats_url, create=False):
                pass
        async with opened(nats_url, create=True):
            pass
        async with opened(nats_url, create=False) as coord:
            assert await coord.read_member("nobody") is None

    run(main)


def test_register_then_renew_by_compare_and_set(nats_url: str) -> None:
    """register creates the member's record and returns its revision; renew with that revision replaces it and
    returns the new one; renew with a stale revision returns None and changes nothing."""

    async def main() -> None:
        async with opened(nats_url) as coord:
            first = await coord.register("m1", {"beat": 1})
            assert await coord.read_member("m1") == ({"beat": 1}, first)
            second = await coord.renew("m1", {"beat": 2}, first)
            assert second is not None and second > first
            assert await coord.renew("m1", {"beat": 3}, first) is None
            assert await coord.read_member("m1") == ({"beat": 2}, second)

    run(main)


def test_leave_deletes_the_own_record_by_compare_and_set(nats_url: str) -> None:
    """leave (graceful) deletes the member's record with a KV delete: with a stale revision it returns False and
    keeps the record; with the current one or none it deletes it; the member can register again."""

    async def main() -> None:
        async with opened(nats_url) as coord:
            first = await coord.register("m1", {"beat": 1})
            second = await coord.renew("m1", {"beat": 2}, first)
            assert second is not None
            assert await coord.leave("m1", first) is False
            assert await coord.read_member("m1") == ({"beat": 2}, second)
            assert await coord.leave("m1", second) is True
            assert await coord.read_member("m1") is None
            again = await coord.register("m1", {"beat": 3})
            assert await coord.leave("m1", None) is True  # without a revision: unconditional
            assert await coord.read_member("m1") is None
            assert again > second

    run(main)


def test_a_members_bucket_that_denies_message_deletes_is_refused_with_create(nats_url: str) -> None:
    """The members bucket is made allowing message deletes (the coordinator's removal), unlike nats-py's KV
    buckets; a bucket made by nats-py (an older spacegrid's), whose stream denies them (JetStream does not let an
    update cancel that), is refused by a PU's open (create) with a ConfigError saying what to do, and still
    opened by readers (no create)."""

    async def main() -> None:
        nc = await connect(nats_url, "test-coordination")
        try:
            js = nc.jetstream()
            await Coordination.open(js, NAMES, create=True)
            info = await js.stream_info(f"KV_{NAMES.members_bucket}")
            assert info.config.deny_delete is False and info.config.max_msgs_per_subject == 1
            old = Names("old")
            for bucket in (old.members_bucket, old.table_bucket):
                await js.create_key_value(bucket=bucket, history=1)
            with pytest.raises(ConfigError, match=f"denies message deletes.*KV_{old.members_bucket}"):
                await Coordination.open(js, old, create=True)
            reader = await Coordination.open(js, old, create=False)
            assert await reader.read_member("nobody") is None
            info = await js.stream_info(f"KV_{old.members_bucket}")
            with pytest.raises(Exception, match="can not cancel deny message deletes"):
                await js.update_stream(dataclasses.replace(info.config, deny_delete=False))
        finally:
            await nc.close()

    run(main)


def test_write_table_is_compare_and_set(nats_url: str) -> None:
    """read_table gives an empty table at revision 0 before any write; write_table with revision 0 creates the
    table once, and with a revision replaces it only if that is still the current one (None otherwise)."""

    async def main() -> None:
        async with opened(nats_url) as coord:
            assert await coord.read_table(PARTITIONS) == (PartitionTable.empty(PARTITIONS), 0)
            v1 = table_v1()
            created = await coord.write_table(v1, 0)
            assert created is not None
            assert await coord.write_table(v1, 0) is None  # lost the create race
            assert await coord.read_table(PARTITIONS) == (v1, created)
            v2 = v1.successor(("a", "c", "b", "b"))
            replaced = await coord.write_table(v2, created)
            assert replaced is not None and replaced > created
            assert await coord.write_table(v2.successor(("c", "c", "b", "b")), created) is None
            assert await coord.read_table(PARTITIONS) == (v2, replaced)

    run(main)


def test_read_table_with_another_partition_count_is_a_config_error(nats_url: str) -> None:
    """A table written for 4 partitions read by a definition that says 8 raises ConfigError: the partition count
    of a space can't change."""

    async def main() -> None:
        async with opened(nats_url) as coord:
            assert await coord.write_table(table_v1(), 0) is not None
            with pytest.raises(ConfigError, match="can't change"):
                await coord.read_table(2 * PARTITIONS)

    run(main)


def test_watch_delivers_the_current_value_then_every_change(nats_url: str) -> None:
    """watch calls back first with the current value, then with each change in order, a member that left as None,
    with each entry's revision; a member removed by the coordinator (a message delete) is not reported."""

    async def main() -> None:
        async with opened(nats_url) as coord:
            created = await coord.write_table(table_v1(), 0)
            assert created is not None
            tables: list[tuple[PartitionTable, int]] = []
            members: list[tuple[str, Any, int]] = []

            async def on_table(key: str, value: bytes | None, revision: int) -> None:
                assert value is not None
                tables.append((coord.decode_table(value), revision))

            async def on_member(key: str, value: bytes | None, revision: int) -> None:
                members.append((key, None if value is None else coord.decode_member(value), revision))

            table_watch = await coord.watch(coord.table, NAMES.table_key, on_table)
            member_watch = await coord.watch(coord.members, ">", on_member)

            async def seen(got: list[Any], count: int) -> None:
                assert len(got) == count, got

            await eventually(lambda: seen(tables, 1), timeout_s=5)
            assert tables == [(table_v1(), created)]
            v2 = table_v1().successor(("a", "c", "b", "b"))
            replaced = await coord.write_table(v2, created)
            await eventually(lambda: seen(tables, 2), timeout_s=5)
            assert tables[1] == (v2, replaced)

            registered = await coord.register("m1", {"beat": 1})
            renewed = await coord.renew("m1", {"beat": 2}, registered)
            assert renewed is not None and await coord.leave("m1", renewed)
            await eventually(lambda: seen(members, 3), timeout_s=5)
            assert members[:2] == [("m1", {"beat": 1}, registered), ("m1", {"beat": 2}, renewed)]
            assert members[2][:2] == ("m1", None) and members[2][2] > renewed

            # the coordinator's removal deletes the message: no marker, so the next entry a watch reports is the
            # member's registration that follows it
            back = await coord.register("m1", {"beat": 3})
            assert await coord.remove_member("m1", back)
            again = await coord.register("m1", {"beat": 4})
            await eventually(lambda: seen(members, 5), timeout_s=5)
            assert members[3:] == [("m1", {"beat": 3}, back), ("m1", {"beat": 4}, again)]
            for task in (table_watch, member_watch):
                task.cancel()
            await asyncio.gather(table_watch, member_watch, return_exceptions=True)

    run(main)


def test_decode_member_refuses_a_record_that_is_not_a_map(nats_url: str) -> None:
    """A member record that is not a msgpack map is refused with ConfigError rather than used."""

    async def main() -> None:
        async with opened(nats_url) as coord:
            await coord.members.put("bogus", codec.encode([1, 2]))
            with pytest.raises(ConfigError, match="not a map"):
                await coord.read_member("bogus")

    run(main)
