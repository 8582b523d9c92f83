"""Each PU's identity is its own credential, so a member record can be written only by that member (issue 11).
Against a real, secure nats-server (LocalGrid's, without PUs, so that nothing else writes the buckets): a PU
credential writes its own record and no other, the coordinator's removal of a dead member (a message delete at the
revision it saw) works with a PU credential and fails once the member renewed, what a PU may not do to the buckets
and the log is refused, and a paused PU declared dead joins again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.js import api

from spacegrid import codec
from spacegrid.engine.connection import nats_options
from spacegrid.engine.coordination import Coordination
from spacegrid.engine.subjects import Names
from spacegrid.engine.transport import Transport
from spacegrid.launcher import LocalGrid
from spacegrid.partitioning import PartitionTable
from spacegrid.security.access import Access
from spacegrid.testing.apps import APP, space
from spacegrid.testing.eventually import eventually
from tests.integration.test_membership import assert_removed_by, start_member

NAMES = Names(space.name)
MEMBERS_STREAM = f"KV_{NAMES.members_bucket}"
DENIAL_WAIT_S = 5.0
ATTACK_TIMEOUT_S = 1.0  # a denied JetStream request gets no answer


@pytest.fixture
def secure_nats(tmp_path: Path) -> Iterator[LocalGrid]:
    """A secure grid without PUs: its nats-server (TLS, a credential per role), the space's buckets made by the
    launcher's admin credential."""
    grid = LocalGrid(tmp_path / "grid", APP)
    try:
        grid.start(0)
        assert grid.secrets is not None and grid.access is not None
        yield grid
    finally:
        grid.stop()


def pu_access(grid: LocalGrid, member_id: str) -> Access:
    assert grid.secrets is not None and grid.access is not None
    return Access(grid.secrets.pu_creds(member_id), grid.access.tls_ca_path)


async def open_as(grid: LocalGrid, access: Access, name: str) -> tuple[Transport, Coordination]:
    transport = await Transport.connect(grid.url, name, access=access)
    return transport, await transport.coordination(NAMES)


async def violations(grid: LocalGrid, access: Access,
                     attacks: list[Callable[[Any], Awaitable[Any]]]) -> list[str]:
    """Run each attack on a raw connection with `access`, one after the other; the permissions violation NATS
    reported for each (the attack's own exception, a timeout for a denied request, is expected)."""
    errors: asyncio.Queue[str] = asyncio.Queue()

    async def on_error(exc: Exception) -> None:
        errors.put_nowait(str(exc))

    nc = await nats.connect(grid.url, error_cb=on_error, allow_reconnect=False, **nats_options(access))
    js = nc.jetstream(timeout=ATTACK_TIMEOUT_S)
    kv = await js.key_value(NAMES.members_bucket)
    seen = []
    try:
        for attack in attacks:
            try:
                await attack((nc, js, kv))
            except Exception:  # noqa: BLE001 - the violation is what counts
                pass
            while True:
                text = await asyncio.wait_for(errors.get(), DENIAL_WAIT_S)
                if "permissions violation" in text.lower():
                    seen.append(text)
                    break
    finally:
        await nc.close()
    return seen


async def members_bucket_state(grid: LocalGrid) -> tuple[int, int, dict[str, tuple[bytes, int]]]:
    """The members stream's last sequence and message count, and every key's value and revision (admin)."""
    nc = await nats.connect(grid.url, **nats_options(grid.access or Access()))
    try:
        js = nc.jetstream()
        info = await js.stream_info(MEMBERS_STREAM)
        kv = await js.key_value(NAMES.members_bucket)
        records = {}
        for key in await kv.keys():
            entry = await kv.get(key)
            records[key] = (bytes(entry.value or b""), int(entry.revision or 0))
        return int(info.state.last_seq), int(info.state.messages), records
    finally:
        await nc.close()


def test_a_pu_credential_writes_its_own_member_record_and_no_other(secure_nats: LocalGrid) -> None:
    """A PU credential's put, create, update, delete and purge of another member's record, its creation of a fake
    member's record, and of a key that only starts with its own member id, are each refused by NATS (permissions
    violation on that key's subject), and the members bucket is unchanged afterwards (not one message written);
    the same credential registers, renews and deletes its own record."""
    grid = secure_nats
    forged = codec.encode({"pid": 666, "incarnation": "forged"})

    async def main() -> None:
        victim_transport, victim = await open_as(grid, pu_access(grid, "pu-b"), "pu-b")
        revision = await victim.register("pu-b", {"incarnation": "b1"})
        before = await members_bucket_state(grid)
        attacker = pu_access(grid, "pu-a")
        seen = await violations(grid, attacker, [
            lambda c: c[2].put("pu-b", forged),
            lambda c: c[2].create("pu-b", forged),
            lambda c: c[2].update("pu-b", forged, last=revision),
            lambda c: c[2].delete("pu-b"),
            lambda c: c[2].purge("pu-b"),
            lambda c: c[2].create("intruder", forged),
            lambda c: c[2].create("pu-a.evil", forged),
        ])
        subjects = [f"$KV.{NAMES.members_bucket}.{key}" for key in ["pu-b"] * 5 + ["intruder", "pu-a.evil"]]
        assert len(seen) == len(subjects)
        for text, subject in zip(seen, subjects):
            assert f"\"{subject.lower()}\"" in text.lower(), (subject, text)  # nats-py lowercases it
        assert await members_bucket_state(grid) == before
        assert set(before[2]) == {"pu-b"}

        own_transport, own = await open_as(grid, attacker, "pu-a")
        registered = await own.register("pu-a", {"incarnation": "a1"})
        renewed = await own.renew("pu-a", {"incarnation": "a1", "beat": 2}, registered)
        assert renewed is not None and await own.read_member("pu-a") == ({"incarnation": "a1", "beat": 2}, renewed)
        assert await own.leave("pu-a", renewed) is True
        assert await own.read_member("pu-a") is None
        assert await victim.read_member("pu-b") == ({"incarnation": "b1"}, revision)
        for transport in (victim_transport, own_transport):
            await transport.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_the_coordinators_removal_at_a_revision_works_with_a_pu_credential_unless_the_member_renewed(
        secure_nats: LocalGrid) -> None:
    """With a PU credential, the coordinator's removal of another member's record at a revision it saw fails
    (False, the record kept) once the member renewed since, and succeeds at the current revision; the member's
    renewal then fails (it was declared dead), its new registration works, a removal at the old revision leaves
    that new registration alone, and removing a record that is gone already returns True."""
    grid = secure_nats

    async def main() -> None:
        member_transport, member = await open_as(grid, pu_access(grid, "pu-b"), "pu-b")
        coordinator_transport, coordinator = await open_as(grid, pu_access(grid, "pu-a"), "pu-a")
        first = await member.register("pu-b", {"beat": 1})
        second = await member.renew("pu-b", {"beat": 2}, first)
        assert second is not None
        assert await coordinator.remove_member("pu-b", first) is False
        assert await member.read_member("pu-b") == ({"beat": 2}, second)
        assert await coordinator.remove_member("pu-b", second) is True
        assert await member.read_member("pu-b") is None
        assert await member.renew("pu-b", {"beat": 3}, second) is None
        rejoined = await member.register("pu-b", {"beat": 4})
        assert await coordinator.remove_member("pu-b", second) is False
        assert await member.read_member("pu-b") == ({"beat": 4}, rejoined)
        assert await coordinator.remove_member("pu-b", rejoined) is True
        assert await coordinator.remove_member("pu-b", rejoined) is True  # gone already: nothing to remove
        for transport in (member_transport, coordinator_transport):
            await transport.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_pu_credential_may_not_purge_members_update_streams_or_delete_log_messages_but_trims_the_log(
        secure_nats: LocalGrid) -> None:
    """A PU credential may not purge the members bucket, update or delete its stream, or delete a message of the
    log or of the table bucket (each refused by NATS, the data unchanged); it still writes the table and trims
    the log (the coordinator does both)."""
    grid = secure_nats
    member_id = "pu-a"

    def request(subject: str, body: dict[str, Any]) -> Callable[[Any], Awaitable[Any]]:
        async def attack(c: Any) -> Any:
            return await c[0].request(subject, json.dumps(body).encode(), timeout=ATTACK_TIMEOUT_S)
        return attack

    async def main() -> None:
        access = pu_access(grid, member_id)
        transport, coord = await open_as(grid, access, member_id)
        await transport.ensure_stream(NAMES, 1, 1 << 20)  # as a PU's bootstrap does
        await coord.register(member_id, {"beat": 1})
        table = PartitionTable.empty(space.partitions).successor((member_id,) * space.partitions)
        table_revision = await coord.write_table(table, 0)
        assert table_revision is not None
        nc = await nats.connect(grid.url, **nats_options(access))
        js = nc.jetstream()
        ack = await js.publish(NAMES.pu_log_subject(member_id), b"a write")
        before = (await members_bucket_state(grid), await coord.read_table(space.partitions))

        seen = await violations(grid, access, [
            request(f"$JS.API.STREAM.PURGE.{MEMBERS_STREAM}", {}),
            request(f"$JS.API.STREAM.UPDATE.{MEMBERS_STREAM}", {"name": MEMBERS_STREAM}),
            request(f"$JS.API.STREAM.DELETE.{MEMBERS_STREAM}", {}),
            request(f"$JS.API.STREAM.MSG.DELETE.{NAMES.stream}", {"seq": ack.seq}),
            request(f"$JS.API.STREAM.MSG.DELETE.KV_{NAMES.table_bucket}", {"seq": table_revision}),
        ])
        assert len(seen) == 5
        assert (await members_bucket_state(grid), await coord.read_table(space.partitions)) == before
        assert (await js.get_msg(NAMES.stream, ack.seq)).data == b"a write"

        await js.purge_stream(NAMES.stream, seq=ack.seq + 1, subject=NAMES.pu_log_wildcard)  # the coordinator's trim
        assert (await js.stream_info(NAMES.stream)).state.messages == 0
        await nc.close()
        await transport.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_paused_pu_is_declared_dead_by_its_coordinator_and_joins_again(secure_nats: LocalGrid) -> None:
    """Membership agents on PU credentials: when one pauses, the coordinator (another PU's credential) removes its
    record; when it resumes, its renewal fails, it is declared dead once, joins again, and is given partitions."""
    grid = secure_nats

    async def main() -> None:
        a = await start_member(grid.url, "pu-a", NAMES.space, pu_access(grid, "pu-a"))
        b = await start_member(grid.url, "pu-b", NAMES.space, pu_access(grid, "pu-b"))

        def shared() -> None:
            assert a.agent.table.owned_by("pu-b") and b.agent.table.version == a.agent.table.version

        await eventually(shared, timeout_s=10)
        await b.pause()
        await eventually(lambda: assert_removed_by(a, "pu-b"), timeout_s=10)
        b.resume()

        def rejoined() -> None:
            assert b.declared_dead == 1 and b.agent.counters["rejoins"] == 1
            assert "pu-b" in a.agent.others_live()

        await eventually(rejoined, timeout_s=10)
        await eventually(shared, timeout_s=10)
        for member in (a, b):
            await member.stop()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_pu_credential_can_not_write_another_members_record_through_a_stream_republish(
        secure_nats: LocalGrid) -> None:
    """A PU credential that creates a stream of its own whose republish targets another member's record subject
    (or another PU's log subject) must not get a message into the members bucket (or the log): the server would
    republish as itself, past the credential's publish permissions, so a PU may create only the space's own
    streams (its JetStream API is an allow list)."""
    grid = secure_nats
    access = pu_access(grid, "pu-a")

    async def main() -> None:
        admin = await Transport.connect(grid.url, "admin", access=grid.access)
        await admin.ensure_stream(NAMES, 1, 1 << 20)
        await admin.close()
        nc = await nats.connect(grid.url, **nats_options(access))
        js = nc.jetstream(timeout=ATTACK_TIMEOUT_S)
        targets = (("SPOOF_MEMBER", f"$KV.{NAMES.members_bucket}"), ("SPOOF_LOG", NAMES.pu_log_wildcard[:-2]))
        for name, target in targets:
            try:
                await js.add_stream(api.StreamConfig(name=name, subjects=[f"_INBOX.{name}.*"],
                                                     republish=api.RePublish(src=f"_INBOX.{name}.*",
                                                                             dest=f"{target}.{{{{wildcard(1)}}}}")))
                await js.publish(f"_INBOX.{name}.pu-b", codec.encode({"incarnation": "forged"}))
            except Exception:  # noqa: BLE001 - refused: what this test wants
                pass
        await nc.close()
        transport, coord = await open_as(grid, pu_access(grid, "pu-b"), "pu-b")
        try:
            assert await coord.read_member("pu-b") is None, "a record was forged through a republish"
        finally:
            await transport.close()
        nc = await nats.connect(grid.url, **nats_options(grid.access or Access()))
        try:
            with pytest.raises(nats.js.errors.NotFoundError):
                await nc.jetstream().get_last_msg(NAMES.stream, NAMES.pu_log_subject("pu-b"))
        finally:
            await nc.close()

    asyncio.run(asyncio.wait_for(main(), 60))
