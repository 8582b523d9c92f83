"""The PU's wire boundary and the log fence, driven with raw NATS messages."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import nats
import pytest

from spacegrid.engine.connection import nats_options
from spacegrid import Client, codec, protocol
from spacegrid.core.logformat import encode_pu_message, parts_of
from spacegrid.engine.changelog import Changelog, ensure_stream
from spacegrid.engine.server import NatsServerProcess
from spacegrid.engine.subjects import Names
from spacegrid.errors import Fenced
from spacegrid.launcher import LocalGrid
from spacegrid.testing.apps import APP, space
from tests.integration.rawnats import collect_replies


async def _raw_request(grid: LocalGrid, member_id: str, data: bytes, replies_expected: int) -> list[Any]:
    return await collect_replies(grid.url, Names(space.name).pu_subject(member_id), data, replies_expected,
                                 access=grid.client_access)


def test_malformed_messages_get_errors_and_the_pu_keeps_serving(grid_factory: Callable[..., LocalGrid]) -> None:
    """Garbage, wrong shapes, ext types and oversize messages each get an error reply; the PU still serves."""
    grid = grid_factory(app=APP, pus=1)
    member_id = next(iter(grid.status().members))
    partition = space.partition_of("kv", "k")

    def ask(data: bytes, replies_expected: int = 1) -> list[Any]:
        return asyncio.run(_raw_request(grid, member_id, data, replies_expected))

    assert ask(b"\xc1\xff\x00")[0][:2] == [protocol.MALFORMED_REQ_ID, "decode"]
    assert ask(codec.encode({"not": "a list"}))[0][:2] == [protocol.MALFORMED_REQ_ID, "bad_request"]
    assert ask(b"\xd4\x05\x00")[0][:2] == [protocol.MALFORMED_REQ_ID, "decode"]  # fixext1: refused
    assert ask(codec.encode(["x" * (2 << 20)]))[0][:2] == [protocol.MALFORMED_REQ_ID, "too_large"]
    short = codec.encode_array([codec.encode([7, protocol.OP_GET])])
    assert ask(short)[0][:2] == [7, "bad_request"]  # a request too short to serve is still answered by its id
    unknown_op = codec.encode_array([protocol.request(8, 99, partition, "kv", "k", None, None, "op-x")])
    assert ask(unknown_op)[0][:2] == [8, "bad_request"]
    no_op_id = codec.encode_array([protocol.request(9, protocol.OP_PUT, partition, "kv", "k", 1, None, "")])
    assert ask(no_op_id)[0][:2] == [9, "bad_request"]
    wrong_partition = codec.encode_array([protocol.request(10, protocol.OP_GET, (partition + 1) % 16, "kv", "k")])
    assert ask(wrong_partition)[0][1] in ("bad_request", "not_owner")
    mixed = codec.encode_array([
        protocol.request(11, protocol.OP_PUT, partition, "kv", "k", "fine", None, "op-11"),
        codec.encode("garbage entry"),
        protocol.request(12, protocol.OP_GET, partition, "nomap", "k"),
    ])
    replies = {reply[0]: reply for reply in ask(mixed, replies_expected=3)}
    assert replies[11][1] == protocol.OK
    assert replies[protocol.MALFORMED_REQ_ID][1] == "bad_request"
    assert replies[12][1] == "unknown_map"

    async def still_serving() -> Any:
        async with await Client.connect(grid.space, grid.url, access=grid.access) as client:
            return await client.get("kv", "k")

    assert asyncio.run(still_serving()) == "fine"


def test_a_thin_client_reaches_the_owner_through_the_partition_subject(grid_factory: Callable[..., LocalGrid]) -> None:
    """Any NATS client can send the batch format to sg.<space>.p.<n>: only the owner listens there."""
    grid = grid_factory(app=APP, pus=2)
    partition = space.partition_of("kv", "thin")

    async def main() -> list[Any]:
        nc = await nats.connect(grid.url, **nats_options(grid.client_access))
        try:
            subject = Names(space.name).partition_subject(partition)
            put = codec.encode_array([protocol.request(1, protocol.OP_PUT, partition, "kv", "thin", "via-subject", None, "thin-1")])
            first = codec.decode((await nc.request(subject, put, timeout=5)).data, 1 << 20)
            get = codec.encode_array([protocol.request(2, protocol.OP_GET, partition, "kv", "thin")])
            second = codec.decode((await nc.request(subject, get, timeout=5)).data, 1 << 20)
            return [first, second]
        finally:
            await nc.close()

    put_reply, get_reply = asyncio.run(main())
    assert put_reply[0][:2] == [1, protocol.OK]
    assert get_reply[0][0] == 2 and get_reply[0][2][0] == "via-subject"


def test_the_fence_rejects_a_deposed_writer(nats_server: NatsServerProcess) -> None:
    """Once a new owner's claim of the partition is in the log, the old owner's append fenced on the claims it had
    seen is rejected (nothing applied), its claim at the older epoch is refused, and the new owner's append fenced
    on its own claim is accepted; a replay sees both owners' committed messages, not the rejected one."""

    async def main() -> None:
        names = Names("fence")
        old_nc, new_nc = await nats.connect(nats_server.url), await nats.connect(nats_server.url)
        try:
            await ensure_stream(old_nc.jetstream(), names, replicas=1, max_msg_bytes=1 << 20)
            old = Changelog(old_nc, old_nc.jetstream(), names, "pu-old", append_timeout_s=5)
            new = Changelog(new_nc, new_nc.jetstream(), names, "pu-new", append_timeout_s=5)
            await old.start()
            await new.start()
            old_claim = await old.claim(3, 1, "pu-old", 5)
            assert old_claim is not None
            old_seq = await old.append(encode_pu_message([(3, b"\x90")]), old_claim)
            new_claim = await new.claim(3, 2, "pu-new", 5)
            assert new_claim is not None and new_claim > old_seq
            assert await new.last_sequence(names.claim_subject(3)) == new_claim
            with pytest.raises(Fenced) as refused:
                await old.append(encode_pu_message([(3, b"\x92")]), old_claim)
            assert refused.value.last_seq == new_claim
            assert await old.claim(3, 1, "pu-old", 5) is None, "a claim at an older epoch is refused"
            assert await new.last_sequence(names.pu_log_wildcard) == old_seq, "the rejected append was not applied"
            new_seq = await new.append(encode_pu_message([(3, b"\x91\x01")]), new_claim)
            assert await new.last_sequence(names.pu_log_subject("pu-new")) == new_seq
            seen: list[tuple[int, list[tuple[int, bytes]]]] = []
            await new.replay(0, new_seq, lambda seq, _, message: seen.append((seq, list(parts_of(message)))), 1 << 20, 5)
            assert seen == [(old_seq, [(3, b"\x90")]), (new_seq, [(3, b"\x91\x01")])]
            await old.stop()
            await new.stop()
        finally:
            await old_nc.close()
            await new_nc.close()

    asyncio.run(main())
