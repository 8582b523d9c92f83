"""Fuzzing the PU's wire (issue 11, item 5): structure-aware and raw random messages, straight to the PUs' request
subjects through a raw NATS connection, in batches. After every batch each PU process is alive, answers a normal
request through spacegrid.client.Client, and every value the client wrote before the fuzzing is unchanged; every
message with a reply subject got its replies (one per request it held, an error with a message when it was refused).

`SPACEGRID_FUZZ_MESSAGES` sets the count (CI: 20,000; the `long` variant: 1,000,000), `SPACEGRID_FUZZ_SEED` the seed
(random by default, printed, so a failing run can be replayed)."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from spacegrid import Client, codec, protocol
from spacegrid.engine.connection import nats_options
from spacegrid.engine.subjects import Names
from spacegrid.errors import SpacegridError
from spacegrid.launcher import LocalGrid
from spacegrid.limits import DEFAULT_LIMITS, KEY_CHARS_MAX, REPLY_MESSAGE_BYTES_MAX, WIRE_NAME_CHARS_MAX, WIRE_OP_ID_CHARS_MAX
from spacegrid.testing.apps import APP, space
from tests.integration.rawnats import collect_replies

FUZZ_MESSAGES_ENV = "SPACEGRID_FUZZ_MESSAGES"
FUZZ_SEED_ENV = "SPACEGRID_FUZZ_SEED"
CI_MESSAGES = 20_000
LONG_MESSAGES = 1_000_000
BATCH_MESSAGES = 1_000  # messages between two checks of the PUs
POOL_EXAMPLES = 40  # hypothesis examples drawn per batch: the values and requests the batch's messages are made of
REPLIES_WAIT_S = 30.0  # a batch's replies all arrive within this
CALL_DEADLINE_S = 10.0  # a client call of the checks
BUDGET_S_BASE = 60.0  # the whole run: this plus...
BUDGET_S_PER_MESSAGE = 0.004  # ...this per message (measured: 0.6 to 0.8 ms on 2 cores, checks included)
CONTROL_KEYS = 16  # per map, written through the client before the fuzzing, checked after every batch
NO_REPLY_SHARE = 0.05  # messages published without a reply subject
PARTITION_SUBJECT_SHARE = 0.1  # messages sent to a partition's subject rather than a PU's

# ---- what the messages are made of ------------------------------------------------------------------------------

MSGPACK_INTS = st.integers(-(2**63), 2**64 - 1)
EDGE_INTS = (0, 1, -1, 15, 16, 2**31, 2**32, 2**63 - 1, -(2**63), 2**64 - 1, True, False)
SCALARS = st.one_of(st.none(), st.booleans(), MSGPACK_INTS, st.floats(), st.text(max_size=24), st.binary(max_size=24))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(SCALARS, inner, max_size=5),
                      max_leaves=12)
# Left out: "spin" holds a PU for its time limit, by design.
MAPS = tuple(space.maps)
HANDLERS = tuple(name for name in space.handlers if name != "spin")
NAMES = MAPS + HANDLERS + tuple(space.queries) + ("nomap", "")
OPS = (protocol.OP_GET, protocol.OP_PUT, protocol.OP_DELETE, protocol.OP_EXECUTE, protocol.OP_QUERY,
       protocol.OP_GET_BACKUP, protocol.OP_VERSIONS)
# A request's fields: mostly of the right type, often of a wrong one, huge and negative ints and bools included.
REQUEST_SHAPED = st.tuples(
    MSGPACK_INTS | st.booleans() | VALUES,
    st.sampled_from(OPS) | MSGPACK_INTS | VALUES,
    st.integers(0, space.partitions - 1) | MSGPACK_INTS | VALUES,
    st.sampled_from(NAMES) | st.text(max_size=WIRE_NAME_CHARS_MAX + 2) | VALUES,
    st.text(max_size=24) | VALUES,
    VALUES,
    st.none() | st.integers(-2, 5) | VALUES,
    st.text(max_size=24) | VALUES,
).map(list)
MESSAGES = st.lists(REQUEST_SHAPED | VALUES, max_size=6) | VALUES


@dataclass
class Pool:
    """One batch's hypothesis draws: values, request-shaped lists and whole messages."""

    values: list[Any] = field(default_factory=list)
    requests: list[list[Any]] = field(default_factory=list)
    messages: list[Any] = field(default_factory=list)


def draw_pool(seed: int) -> Pool:
    """POOL_EXAMPLES hypothesis examples, reproducible from seed (generation only: a shrunk example means nothing to
    a grid that already took the whole batch)."""
    pool = Pool()

    @hypothesis_seed(seed)
    @settings(max_examples=POOL_EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(VALUES, REQUEST_SHAPED, MESSAGES)
    def draw(value: Any, request: list[Any], message: Any) -> None:
        pool.values.append(value)
        pool.requests.append(request)
        pool.messages.append(message)

    draw()
    return pool


def nested_bytes(depth: int, in_map: bool) -> bytes:
    """A msgpack value `depth` arrays (or one-entry maps) deep, as bytes: deeper than msgpack's packer goes."""
    return (b"\x81\xa1k" if in_map else b"\x91") * depth + b"\xc0"


class Fuzzer:
    """Messages made fast from a batch's pool with a seeded Random: hypothesis's values and requests as drawn,
    spliced into well-formed requests, real requests for real keys, deep nesting, lying headers, oversized and
    over-long messages, raw random bytes and mutations of encoded messages."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.op_ids = 0

    def batch(self, pool: Pool, count: int) -> list[bytes]:
        messages = [self.oversized(), self.too_many_requests()][:count]
        while len(messages) < count:
            messages.append(self.message(pool))
        self.rng.shuffle(messages)
        return messages

    def message(self, pool: Pool) -> bytes:
        roll = self.rng.random()
        if roll < 0.15:
            return codec.encode(self.rng.choice(pool.messages))
        if roll < 0.65:
            return codec.encode_array([self.item(pool) for _ in range(self.rng.choice((0, 1, 1, 2, 3, 5, 8, 16)))])
        if roll < 0.72:
            return self.deep_message()
        if roll < 0.77:
            return self.lying_header()
        if roll < 0.87:
            return self.mutated(pool)
        return self.rng.randbytes(self.rng.choice((0, 1, 2, 3, 8, 30, 100, 300)))

    def item(self, pool: Pool) -> bytes:
        roll = self.rng.random()
        if roll < 0.2:
            return codec.encode(self.rng.choice(pool.requests))
        if roll < 0.55:
            return codec.encode(self.spliced(pool))
        if roll < 0.85:
            return codec.encode(self.valid(pool))
        if roll < 0.92:
            return self.deep_request()
        return codec.encode(self.rng.choice(pool.values))

    def valid(self, pool: Pool) -> list[Any]:
        """A well-formed request for a key of the app, on its partition: served for real (the key space is small, so
        the grid's state stays bounded; the control keys are not in it)."""
        rng = self.rng
        op, name = rng.choice(OPS), rng.choice(MAPS + HANDLERS + tuple(space.queries))
        map_name = name if name in space.maps else space.handlers[name].map if name in space.handlers else "kv"
        key = f"fz-{rng.randrange(256)}"
        value = rng.choice(pool.values) if rng.random() < 0.8 else rng.choice(("v", 1, {"keys": [key], "value": 2}))
        expected = None if rng.random() < 0.7 else rng.choice((0, 1, 2, 5, rng.choice(pool.values)))
        self.op_ids += 1
        return [rng.randrange(1, 2**31), op, space.partition_of(map_name, key), name, key, value, expected,
                f"fz:{self.op_ids}" if rng.random() < 0.95 else ""]

    def spliced(self, pool: Pool) -> list[Any]:
        """A valid request with one to three fields replaced by something of another type, size or range, or with a
        field too many or too few."""
        rng = self.rng
        request = self.valid(pool)
        for _ in range(rng.randint(1, 3)):
            request[rng.randrange(len(request))] = rng.choice((
                rng.choice(pool.values), rng.choice(EDGE_INTS), rng.randrange(-5, 20), "x" * (WIRE_NAME_CHARS_MAX + 1),
                "k" * (KEY_CHARS_MAX + 1), "o" * (WIRE_OP_ID_CHARS_MAX + 1), self.nested_value()))
        if rng.random() < 0.1:
            request = request[:rng.randrange(len(request))] if rng.random() < 0.5 else request + [None]
        return request

    def nested_value(self) -> Any:
        value: Any = "leaf"
        for _ in range(self.rng.choice((63, 64, 65, 66, 200))):  # around WIRE_VALUE_DEPTH_MAX (64)
            value = [value] if self.rng.random() < 0.5 else {"k": value}
        return value

    def deep_depth(self) -> int:
        return self.rng.choice((62, 63, 64, 65, 66, 1020, 1021, 1022, 1023, 1024, 1025, self.rng.randrange(1, 5000)))

    def deep_request(self) -> bytes:
        """A request whose arg1, arg2 or partition nests `depth` deep, past msgpack's packer and unpacker at times."""
        fields = [codec.encode(field) for field in (7, protocol.OP_PUT, 0, "kv", "fz-0", "v", None, "fz:deep")]
        fields[self.rng.choice((2, 5, 6))] = nested_bytes(self.deep_depth(), self.rng.random() < 0.5)
        return codec.encode_array(fields)

    def deep_message(self) -> bytes:
        if self.rng.random() < 0.5:
            return nested_bytes(self.deep_depth(), self.rng.random() < 0.5)
        return codec.encode_array([self.deep_request() for _ in range(self.rng.randint(1, 4))])

    def lying_header(self) -> bytes:
        """A str, bin, array, map or extension header declaring more than follows (up to 4 GiB), alone or inside a
        request."""
        rng = self.rng
        header = rng.choice((b"\xdb", b"\xc6", b"\xdd", b"\xdf")) + rng.choice((2**32 - 1, 2**31, 2**20 + 1, 70_000,
                                                                                  rng.randrange(2**32))).to_bytes(4, "big")
        header = rng.choice((header, b"\xc9" + rng.randrange(2**32).to_bytes(4, "big") + b"\x05", b"\xd4\x05\x00",
                             b"\xc7\x0c\xff" + rng.randbytes(12), b"\xd7\xff" + rng.randbytes(8)))
        body = header + rng.randbytes(rng.choice((0, 4, 64)))
        if rng.random() < 0.5:
            return body
        fields = [codec.encode(field) for field in (9, protocol.OP_PUT, 0, "kv", "fz-1", "v", None, "fz:lie")]
        fields[rng.randrange(len(fields))] = body
        return codec.encode_array(fields)

    def mutated(self, pool: Pool) -> bytes:
        """An encoded message with bytes flipped, cut, inserted or repeated."""
        rng = self.rng
        data = bytearray(codec.encode_array([codec.encode(self.valid(pool)) for _ in range(rng.randint(1, 3))]))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data) + 1)
            kind = rng.randrange(4)
            if kind == 0 and at < len(data):
                data[at] ^= 1 << rng.randrange(8)
            elif kind == 1:
                del data[at:]
            elif kind == 2:
                data[at:at] = rng.randbytes(rng.randint(1, 8))
            else:
                data[at:at] = data[at:at + rng.randint(1, 16)]
        return bytes(data)

    def oversized(self) -> bytes:
        """A message one byte past request_payload_bytes_max (refused before decoding)."""
        data = codec.encode(["x" * DEFAULT_LIMITS.request_payload_bytes_max])
        return data[:DEFAULT_LIMITS.request_payload_bytes_max + 1]

    def too_many_requests(self) -> bytes:
        """A message of requests_per_message_max + 1 requests (refused whole) or of exactly that many (each refused)."""
        count = DEFAULT_LIMITS.requests_per_message_max + self.rng.randrange(2)
        return codec.encode_array([codec.encode([count, None])] * count)


# ---- the replies a message must get -----------------------------------------------------------------------------


@dataclass
class Expected:
    """What one message must get back: one reply per request it holds, addressed to the request's id, or one error
    to MALFORMED_REQ_ID when it is refused whole, or a ping (an empty reply) when it holds no request."""

    data: bytes
    ids: Counter[int]  # the ids still owed a reply
    refused: bool
    ping: bool
    total: int = 0
    items: int = 0
    pinged: bool = False

    def __post_init__(self) -> None:
        self.total = sum(self.ids.values())

    @property
    def answered(self) -> bool:
        return self.items == self.total and self.pinged == self.ping


def expected_of(data: bytes) -> Expected:
    """What a PU answers to data, found with the PU's own decoding (protocol.decode_message with the grid's limits)."""
    try:
        requests = protocol.decode_message(data, DEFAULT_LIMITS)
    except SpacegridError:
        return Expected(data, Counter({protocol.MALFORMED_REQ_ID: 1}), refused=True, ping=False)
    return Expected(data, Counter(protocol.request_id_of(raw) for raw in requests), refused=False, ping=not requests)


@dataclass
class Tally:
    """What the run sent and got back, and every way a reply broke the rules."""

    messages: int = 0
    requests: int = 0
    refused_messages: int = 0
    replies: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    def check_reply(self, expected: Expected, item: Any) -> None:
        self.replies += 1
        expected.items += 1
        try:
            reply = protocol.decode_reply(item)
        except SpacegridError as exc:
            self.violations.append(f"an undecodable reply {str(exc)[:200]} to {expected.data[:64].hex()}")
            return
        if expected.ids[reply.req_id] <= 0:
            self.violations.append(f"a reply to {reply.req_id}, which {expected.data[:64].hex()} did not ask for, "
                                   "or too many")
        expected.ids[reply.req_id] -= 1
        if isinstance(reply, protocol.Refused):
            self.codes[reply.error.code] += 1
            if not str(reply.error).strip():
                self.violations.append(f"an error {reply.error.code} without a message to {expected.data[:64].hex()}")
        else:
            self.codes["ok"] += 1


class Wire:
    """A raw NATS connection to the grid: sends a batch with one reply subject per message and counts the replies."""

    def __init__(self, nc: Any, subjects: list[str], rng: random.Random) -> None:
        self.nc = nc
        self.subjects = subjects
        self.rng = rng
        self.inbox = nc.new_inbox()
        self.waiting: dict[int, Expected] = {}
        self.all_answered = asyncio.Event()
        self.tally = Tally()
        self.sent = 0

    async def start(self) -> None:
        await self.nc.subscribe(f"{self.inbox}.*", cb=self.on_reply)

    async def on_reply(self, msg: Any) -> None:
        expected = self.waiting.get(int(msg.subject.rpartition(".")[2]))
        if expected is None:
            self.tally.violations.append(f"a reply on {msg.subject} after its message was answered")
            return
        try:
            items = codec.decode(msg.data, REPLY_MESSAGE_BYTES_MAX)  # b"": NATS's "no responders"
        except SpacegridError as exc:
            self.tally.violations.append(f"an undecodable reply message ({exc}) to {expected.data[:64].hex()}")
            return
        if not items:
            expected.pinged = True
        for item in items:
            self.tally.check_reply(expected, item)
        if expected.answered:
            del self.waiting[int(msg.subject.rpartition(".")[2])]
            if not self.waiting:
                self.all_answered.set()

    async def send(self, messages: list[bytes]) -> None:
        """Publish the batch; wait (bounded) until every message with a reply subject is answered in full."""
        assert not self.waiting
        self.all_answered.clear()
        for data in messages:
            self.sent += 1
            expected = expected_of(data)
            self.tally.messages += 1
            self.tally.requests += 0 if expected.refused else expected.total
            self.tally.refused_messages += expected.refused
            subject = (self.subjects[self.sent % len(self.subjects)] if self.rng.random() >= PARTITION_SUBJECT_SHARE
                       else Names(space.name).partition_subject(self.rng.randrange(space.partitions)))
            if self.rng.random() < NO_REPLY_SHARE:
                await self.nc.publish(subject, data)
                continue
            self.waiting[self.sent] = expected
            await self.nc.publish(subject, data, reply=f"{self.inbox}.{self.sent}")
        await self.nc.flush()
        if not self.waiting:
            return
        try:
            await asyncio.wait_for(self.all_answered.wait(), REPLIES_WAIT_S)
        except asyncio.TimeoutError:
            silent = list(self.waiting.values())[:5]
            raise AssertionError(f"{len(self.waiting)} messages not answered in full within {REPLIES_WAIT_S} s, e.g. "
                                 + "; ".join(f"{e.data[:80].hex()} ({e.items} of {e.total} replies)"
                                             for e in silent)) from None


# ---- the run ----------------------------------------------------------------------------------------------------


async def connect_raw(grid: LocalGrid) -> Any:
    """A raw NATS connection to the grid with the client role's credential, as a thin client in another language
    would open it (as test_wire.py connects)."""
    return await nats.connect(grid.url, **nats_options(grid.client_access))


async def connect_client(grid: LocalGrid) -> Client:
    return await Client.connect(grid.space, grid.url, access=grid.access)


async def check_the_grid(grid: LocalGrid, client: Client, control: dict[tuple[str, str], Any], batch: int) -> None:
    """Every PU process lives and serves a normal request; no value written before the fuzzing changed."""
    dead = [pu.index for pu in grid.pus if not pu.alive()]
    assert not dead, f"after batch {batch}: PU(s) {dead} died; see {[str(pu.log_path) for pu in grid.pus]}"
    probe = f"fuzz-probe-{batch % 16}"
    version = await client.put("kv", probe, batch, deadline_s=CALL_DEADLINE_S)
    assert await client.get_entry("kv", probe, deadline_s=CALL_DEADLINE_S) == (batch, version)
    found = await asyncio.gather(*(client.get_entry(map_name, key, deadline_s=CALL_DEADLINE_S)
                                   for map_name, key in control))
    changed = {item: (control[item], now) for item, now in zip(control, found) if now != control[item]}
    assert not changed, f"after batch {batch}: acknowledged values changed: {changed}"


def fuzz(grid: LocalGrid, messages_total: int, seed: int) -> Tally:
    """Send messages_total fuzzed messages in batches, checking the grid after each; the tally of the run."""
    budget_s = BUDGET_S_BASE + BUDGET_S_PER_MESSAGE * messages_total
    deadline_s = time.monotonic() + budget_s
    member_ids = sorted(grid.status().members)
    subjects = [Names(space.name).pu_subject(member_id) for member_id in member_ids]
    fuzzer = Fuzzer(seed)

    async def setup() -> tuple[Any, Client, Wire, dict[tuple[str, str], Any]]:
        nc, client = await connect_raw(grid), await connect_client(grid)
        wire = Wire(nc, subjects, random.Random(seed + 1))
        await wire.start()
        control: dict[tuple[str, str], Any] = {}
        token = secrets.token_hex(6)
        for map_name in ("kv", "ledger"):
            for i in range(CONTROL_KEYS):
                key, value = f"fuzz-control-{i}-{token}", {"i": i, "token": token, "nested": [[i]]}
                control[(map_name, key)] = (value, await client.put(map_name, key, value, deadline_s=CALL_DEADLINE_S))
        return nc, client, wire, control

    with asyncio.Runner() as runner:
        nc, client, wire, control = runner.run(setup())
        try:
            batches = -(-messages_total // BATCH_MESSAGES)
            for batch in range(batches):
                assert time.monotonic() < deadline_s, f"the run took longer than its budget of {budget_s:.0f} s"
                count = min(BATCH_MESSAGES, messages_total - batch * BATCH_MESSAGES)
                messages = fuzzer.batch(draw_pool(seed + batch), count)
                runner.run(wire.send(messages))
                runner.run(check_the_grid(grid, client, control, batch))
                assert not wire.tally.violations, wire.tally.violations[:10]
        finally:
            runner.run(client.close())
            runner.run(nc.close())
    return wire.tally


def run_and_report(grid_factory: Callable[..., LocalGrid], messages_total: int) -> None:
    seed = int(os.environ.get(FUZZ_SEED_ENV) or secrets.randbelow(2**32))
    grid = grid_factory(app=APP, pus=2)
    started_s = time.monotonic()
    print(f"\nwire fuzz: {messages_total} messages, {FUZZ_SEED_ENV}={seed}")
    tally = fuzz(grid, messages_total, seed)
    elapsed_s = time.monotonic() - started_s
    crashes = [pu.index for pu in grid.pus if not pu.alive()]
    logged = [line for pu in grid.pus for line in pu.log_path.read_text(errors="replace").splitlines()
              if "Traceback" in line or "NATS error" in line or "Task exception" in line]
    print(f"wire fuzz: {tally.messages} messages ({tally.refused_messages} refused whole), {tally.requests} requests, "
          f"{tally.replies} replies in {elapsed_s:.1f} s; crashes: {len(crashes)}; by code: {dict(tally.codes)}")
    assert tally.messages == messages_total and not crashes
    assert not logged, logged[:10]
    assert tally.codes["ok"] > 0 and tally.codes["bad_request"] > 0 and tally.codes["decode"] > 0, tally.codes


def messages_from_env(default: int) -> int:
    return int(os.environ.get(FUZZ_MESSAGES_ENV) or default)


@pytest.mark.timeout(BUDGET_S_BASE + BUDGET_S_PER_MESSAGE * messages_from_env(CI_MESSAGES) + 120)
def test_fuzzed_messages_never_crash_a_pu_nor_change_acknowledged_values(grid_factory: Callable[..., LocalGrid]) -> None:
    """SPACEGRID_FUZZ_MESSAGES (20,000) fuzzed messages to 2 PUs: no PU dies or logs an escaped exception, each
    serves a normal request after every batch, no acknowledged value changes, and every request in a message with a
    reply subject is answered (errors with a message), as is every refused message."""
    run_and_report(grid_factory, messages_from_env(CI_MESSAGES))


@pytest.mark.long
@pytest.mark.timeout(BUDGET_S_BASE + BUDGET_S_PER_MESSAGE * max(LONG_MESSAGES, messages_from_env(0)) + 300)
def test_a_long_fuzz_never_crashes_a_pu(grid_factory: Callable[..., LocalGrid]) -> None:
    """The same with SPACEGRID_FUZZ_MESSAGES (default 1,000,000) messages."""
    run_and_report(grid_factory, messages_from_env(LONG_MESSAGES))


def test_a_no_op_write_through_write_after_an_unpersisted_one_is_answered(grid_factory: Callable[..., LocalGrid]) -> None:
    """After a write to a map without persistence, a write-through no-op on the same partition (deleting an absent
    key of the write-through map "ledger") waits for the store to reach the write's version; it must be answered
    (False: nothing deleted) once the pump moves the clean partition's position up, within its interval."""
    grid = grid_factory(app=APP, pus=1)
    member_id = next(iter(grid.status().members))

    async def main() -> list[Any]:
        client = await connect_client(grid)
        try:
            await client.put("sessions", "s@fuzz", 1, deadline_s=CALL_DEADLINE_S)
        finally:
            await client.close()
        delete = codec.encode_array([protocol.request(1, protocol.OP_DELETE, space.partition_of("ledger", "gone@fuzz"),
                                                      "ledger", "gone@fuzz", None, None, "no-op-1")])
        wait_s = DEFAULT_LIMITS.log_trim_interval_s + 4.0  # the pump moves quiet partitions up this often
        return await collect_replies(grid.url, Names(space.name).pu_subject(member_id), delete, 1, timeout_s=wait_s,
                                     access=grid.client_access)

    assert asyncio.run(main()) == [[1, protocol.OK, False]]
