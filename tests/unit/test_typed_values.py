"""Unit tests of typed values (issue 13 item 4): a space's allow-list of registered types (spacegrid.values,
spacegrid.valuetypes), their round trips, refusals and bounds, and how the wire and a partition carry them."""

from __future__ import annotations

import collections
import datetime
import enum
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import msgpack
import pytest

from spacegrid import codec, protocol, valuetypes
from spacegrid.core.partition import PartitionState
from spacegrid.errors import DecodeError, DefinitionError, EncodeError, PayloadTooLarge, SpacegridError
from spacegrid.limits import (
    DEFAULT_LIMITS,
    WIRE_TYPED_EXT_BYTES_MAX,
    WIRE_TYPED_NESTING_MAX,
    WIRE_VALUE_DEPTH_MAX,
)
from spacegrid.space import Space
from spacegrid.values import Undecodable, Values
from spacegrid.valuetypes import STANDARD, ValueType

UTC = datetime.timezone.utc


@dataclass(frozen=True)
class Point:
    x: int
    y: int


@dataclass
class Event:
    name: str
    at: datetime.datetime
    points: list[Point]
    where: Point | None = None
    derived: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.derived = len(self.points)


@dataclass
class Box:
    inner: Any


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1


class Pair(NamedTuple):
    a: int
    b: int


def typed_space() -> Space:
    space = Space("typed", partitions=4, types=STANDARD)
    space.register_type(Point, code=16)
    space.register_type(Event, code=17)
    space.register_type(Box, code=18)
    space.register_type(Color, code=19, encode=lambda color: color.value, decode=Color)
    space.map("m")
    return space


SPACE = typed_space()
VALUES = SPACE.values


def round_trip(value: Any, values: Values = VALUES) -> Any:
    return values.decode(values.encode(value), 1 << 22)


# ---- round trips ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    datetime.datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC),
    datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30))),
    datetime.date(1999, 12, 31),
    Decimal("12.50"), Decimal("-0.000001"), Decimal("1E+30"),
    {1, 2, 3}, frozenset({"a", "b"}), set(),
    (1, "two", 3.0), (), ((1, 2), (3,)),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    Point(1, 2), Color.BLUE,
])
def test_each_ready_made_and_registered_type_round_trips_as_itself(value: Any) -> None:
    """A value of every ready-made type, of a registered dataclass and of a type with its own functions comes back
    equal and of exactly its type."""
    back = round_trip(value)
    assert back == value and type(back) is type(value)


def test_a_datetime_keeps_its_instant_and_offset_but_not_its_zone_name() -> None:
    """A zoneinfo datetime comes back as the same instant with the same UTC offset, as a fixed-offset timezone."""
    paris = datetime.datetime(2024, 7, 1, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    back = round_trip(paris)
    assert back == paris and back.utcoffset() == datetime.timedelta(hours=2)
    assert isinstance(back.tzinfo, datetime.timezone)


def test_typed_values_nest_in_plain_values_and_in_one_another() -> None:
    """Typed values inside lists, maps (as keys too) and inside other typed values all come back typed; a
    dataclass's init=False field is recomputed, not written."""
    event = Event("launch", datetime.datetime(2024, 1, 1, tzinfo=UTC), [Point(0, 0), Point(1, 1)], Point(5, 5))
    value = {"events": [event], (1, 2): {frozenset({Point(1, 2)})}, "sum": Decimal("3.3"),
             "box": Box(Box((datetime.date(2020, 2, 29), {uuid.UUID(int=7)})))}
    back = round_trip(value)
    assert back == value
    assert type(back["events"][0].points[1]) is Point and back["events"][0].derived == 2
    assert type(next(iter(back[(1, 2)]))) is frozenset


def test_plain_values_are_written_as_before() -> None:
    """Without typed values in it, a value is written byte for byte as codec.encode writes it, and a space without
    types reads tuples and subclasses of plain types as their plain types, as before."""
    plain = {"a": [1, 2.5, "s", True, None, b"\x00"], 3: {"n": -1}}
    assert VALUES.encode(plain) == codec.encode(plain)
    untyped = Space("untyped").values
    assert round_trip((1, (2, 3)), untyped) == [1, [2, 3]]
    assert round_trip({"level": Level.LOW, "pair": Pair(1, 2), "od": collections.OrderedDict(a=1)}, untyped) == {
        "level": 1, "pair": [1, 2], "od": {"a": 1}}
    assert type(round_trip(Level.LOW, untyped)) is int


def test_msgpack_timestamps_still_decode_as_seconds() -> None:
    """msgpack's own timestamp extension (-1) decodes as a float, as codec.decode has it."""
    assert VALUES.decode(msgpack.packb([msgpack.Timestamp(1, 500_000_000)]), 100) == [1.5]


def test_pydantic_models_round_trip_when_registered() -> None:
    """A pydantic model registered with a code comes back as itself, its validators run; its fields' types are
    registered too."""
    pydantic = pytest.importorskip("pydantic")

    class Order(pydantic.BaseModel):
        id: uuid.UUID
        amount: Decimal
        placed: datetime.datetime
        tags: tuple[str, ...] = ()

    space = Space("pyd", types=STANDARD)
    space.register_type(Order, code=40)
    order = Order(id=uuid.uuid4(), amount=Decimal("9.99"), placed=datetime.datetime.now(UTC), tags=("a",))
    back = round_trip(order, space.values)
    assert back == order and type(back) is Order
    crafted = msgpack.packb(msgpack.ExtType(40, msgpack.packb({"id": "not a uuid"})))
    with pytest.raises(DecodeError, match="Order"):
        space.values.decode(crafted, 1000)


# ---- refusals ------------------------------------------------------------------------------------------------------


def test_an_unregistered_type_is_refused_naming_it_and_how_to_register_it() -> None:
    """Encoding a value of a type the space did not register raises EncodeError naming the type and the call that
    registers it: the class for a ready-made type, a code for a dataclass, functions for anything else."""
    untyped = Space("plain").values
    with pytest.raises(EncodeError, match=r"datetime\.datetime is not registered on space 'plain'.*types=\[datetime"):
        untyped.encode({"at": datetime.datetime.now(UTC)})
    with pytest.raises(EncodeError, match=r"Point is not registered.*register_type\(Point, code=N\), N in 16\.\.127"):
        untyped.encode([Point(1, 2)])
    with pytest.raises(EncodeError, match=r"complex is not registered.*encode=\.\.\., decode=\.\.\."):
        VALUES.encode(1j)
    with pytest.raises(EncodeError, match="not registered"):
        untyped.encode({1, 2})


def test_a_subclass_of_a_registered_type_is_not_registered_with_it() -> None:
    """Registration is by exact class: a subclass is refused, and the message says it subclasses a registered one."""

    @dataclass(frozen=True)
    class Point3(Point):
        z: int = 0

    with pytest.raises(EncodeError, match="subclasses the registered Point"):
        VALUES.encode(Point3(1, 2, 3))


def test_a_naive_datetime_is_refused() -> None:
    """A datetime without a timezone names no instant: encoding it raises EncodeError saying how to give it one; a
    naive datetime on the wire is refused too."""
    with pytest.raises(EncodeError, match="naive datetime"):
        VALUES.encode(datetime.datetime(2024, 1, 1))
    crafted = msgpack.packb(msgpack.ExtType(valuetypes.DATETIME.code, msgpack.packb("2024-01-01T00:00:00")))
    with pytest.raises(DecodeError, match="UTC offset"):
        VALUES.decode(crafted, 100)


def test_an_unknown_extension_code_is_refused_on_decode() -> None:
    """An extension code the space did not register raises DecodeError naming it and what is registered."""
    with pytest.raises(DecodeError, match=r"extension type 99 is not registered on space 'typed' \(registered: 1 "):
        VALUES.decode(msgpack.packb({"v": msgpack.ExtType(99, b"\xc0")}), 100)
    with pytest.raises(DecodeError, match="extension type 16 is not registered"):
        Space("plain").values.decode(VALUES.encode(Point(1, 2)), 100)


@pytest.mark.parametrize("code, payload, match", [
    (16, {"x": 1, "y": 2, "__class__": "os.system"}, "has no init field __class__"),
    (16, {"x": 1}, "missing 1 required"),
    (16, ["os.system", "rm"], "map of its fields"),
    (valuetypes.UUID.code, b"short", "16 bytes"),
    (valuetypes.DECIMAL.code, "not a number", "InvalidOperation"),
    (valuetypes.SET.code, [[1], [2]], "unhashable"),
    (valuetypes.DATE.code, "x" * 100, "ISO 8601"),
])
def test_a_payload_its_type_refuses_is_a_decode_error(code: int, payload: Any, match: str) -> None:
    """A crafted payload of a registered code is decoded by that type's decode only, and what it refuses is a
    DecodeError: no class is looked up by a name from the wire."""
    with pytest.raises(DecodeError, match=match):
        VALUES.decode(msgpack.packb(msgpack.ExtType(code, msgpack.packb(payload))), 1000)


def test_an_undecodable_ext_payload_is_a_decode_error() -> None:
    """An extension payload that is not one msgpack document raises DecodeError naming the type."""
    with pytest.raises(DecodeError, match=r"in a .*\.Point value: not msgpack"):
        VALUES.decode(msgpack.packb(msgpack.ExtType(16, b"\xc1")), 100)


def test_an_encode_function_that_raises_is_an_encode_error() -> None:
    """A registered encode function that raises becomes an EncodeError naming the type."""
    space = Space("boom")
    space.register_type(complex, code=30, encode=lambda value: 1 / 0, decode=complex)
    with pytest.raises(EncodeError, match="builtins.complex raised ZeroDivisionError"):
        space.values.encode(1j)


# ---- bounds --------------------------------------------------------------------------------------------------------


def test_an_ext_payload_past_its_bound_is_refused_both_ways() -> None:
    """A typed value whose payload passes WIRE_TYPED_EXT_BYTES_MAX is refused on encode (PayloadTooLarge) and on
    decode (DecodeError naming the bound)."""
    big = tuple(["x" * 1024] * (WIRE_TYPED_EXT_BYTES_MAX // 1024))
    with pytest.raises(PayloadTooLarge, match="WIRE_TYPED_EXT_BYTES_MAX"):
        VALUES.encode(big)
    crafted = msgpack.packb(msgpack.ExtType(valuetypes.TUPLE.code, msgpack.packb(list(big))))
    with pytest.raises(DecodeError, match=r"limits\.WIRE_TYPED_EXT_BYTES_MAX"):
        VALUES.decode(crafted, 1 << 22)


def test_typed_values_nest_at_most_their_bound_both_ways() -> None:
    """Typed values nested WIRE_TYPED_NESTING_MAX deep round-trip; one level more is refused on encode and decode."""

    def nested(depth: int) -> Any:
        value: Any = 0
        for _ in range(depth):
            value = Box(value)
        return value

    assert round_trip(nested(WIRE_TYPED_NESTING_MAX)) == nested(WIRE_TYPED_NESTING_MAX)
    with pytest.raises(EncodeError, match="WIRE_TYPED_NESTING_MAX"):
        VALUES.encode(nested(WIRE_TYPED_NESTING_MAX + 1))
    crafted = msgpack.packb(0)
    for _ in range(WIRE_TYPED_NESTING_MAX + 1):
        crafted = msgpack.packb(msgpack.ExtType(18, b"\x81\xa5inner" + crafted))  # Box(inner=crafted)
    with pytest.raises(DecodeError, match="WIRE_TYPED_NESTING_MAX"):
        VALUES.decode(crafted, 1 << 20)


def test_a_payload_nests_arrays_and_maps_at_most_the_value_bound_both_ways() -> None:
    """A typed value's payload nests arrays and maps at most WIRE_VALUE_DEPTH_MAX deep, on encode and decode."""

    def lists(depth: int) -> Any:
        value: Any = 0
        for _ in range(depth):
            value = [value]
        return value

    assert round_trip(Box(lists(WIRE_VALUE_DEPTH_MAX - 1))) == Box(lists(WIRE_VALUE_DEPTH_MAX - 1))
    with pytest.raises(EncodeError, match="WIRE_VALUE_DEPTH_MAX"):
        VALUES.encode(Box(lists(WIRE_VALUE_DEPTH_MAX)))
    crafted = msgpack.packb(msgpack.ExtType(18, msgpack.packb({"inner": lists(WIRE_VALUE_DEPTH_MAX)})))
    with pytest.raises(DecodeError, match="deep"):
        VALUES.decode(crafted, 1 << 20)


# ---- registering ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("register, match", [
    (lambda s: s.register_type(Point), "needs a code of its own"),
    (lambda s: s.register_type(Point, code=3), "16..127"),
    (lambda s: s.register_type(Point, code=128), "16..127"),
    (lambda s: s.register_type(Point, code="16"), "16..127"),
    (lambda s: s.register_type(Point, code=16, encode=vars), "both encode= and decode="),
    (lambda s: s.register_type(complex, code=20), "neither a dataclass nor a pydantic model"),
    (lambda s: s.register_type(datetime.datetime, code=20), "ready-made under code 1"),
    (lambda s: s.register_type(dict, code=20, encode=dict, decode=dict), "msgpack's own types"),
    (lambda s: s.register_type(Box, code=16), "code 16 is taken by"),
    (lambda s: s.register_type(Point, code=21), "registered already"),
    (lambda s: s.values.add(ValueType(complex, 2, str, complex)), "not a user's code"),
    (lambda s: s.register_type("Point", code=22), "register a class"),
])
def test_bad_registrations_are_definition_errors(register: Any, match: str) -> None:
    """Registering without a code, with a code outside 16..127 or taken, a class twice, a plain type, or a class
    spacegrid can't write without functions raises DefinitionError saying what is wrong."""
    space = Space("defs")
    space.register_type(Point, code=16)
    with pytest.raises(DefinitionError, match=match):
        register(space)


def test_ready_made_types_register_by_class_and_once() -> None:
    """Space(types=[...]) takes ready-made types by class or as ValueTypes; the same one twice is registered once;
    nothing is registered unless named."""
    space = Space("some", types=[datetime.datetime, valuetypes.DECIMAL, Decimal, tuple])
    assert [t.code for t in space.values.types()] == [1, 3, 6]
    assert space.register_type(datetime.datetime) is valuetypes.DATETIME
    assert Space("none").values.types() == ()


# ---- the wire and the partition ------------------------------------------------------------------------------------


def test_a_request_with_an_unknown_code_is_refused_alone() -> None:
    """In a request message, a request holding an unregistered extension code is refused with DecodeError to its
    own id; the other requests of the message decode with their typed values."""
    when = datetime.datetime(2024, 1, 1, tzinfo=UTC)
    good = protocol.request(1, protocol.OP_PUT, 0, "m", "a", when, None, "op-1", VALUES)
    bad = protocol.request(2, protocol.OP_PUT, 0, "m", "b", msgpack.ExtType(99, b"\xc0"), None, "op-2", VALUES)
    requests = protocol.decode_message(codec.encode_array([good, bad]), DEFAULT_LIMITS, VALUES)
    assert protocol.decode_request(requests[0], 4).value == when  # type: ignore[union-attr]
    assert type(requests[1]) is Undecodable and protocol.request_id_of(requests[1]) == 2
    with pytest.raises(DecodeError, match="extension type 99"):
        protocol.decode_request(requests[1], 4)


def test_a_message_that_is_one_ext_value_is_refused_whole() -> None:
    """A message that is not an array of requests stays refused whole, as before."""
    with pytest.raises(DecodeError, match="extension type 99"):
        protocol.decode_message(b"\xd4\x63\x00", DEFAULT_LIMITS, VALUES)  # fixext1, code 99


def test_a_reply_with_an_unknown_code_fails_only_its_request() -> None:
    """A reply holding a value of a type the client did not register becomes that request's DecodeError; the
    other replies of the message decode typed."""
    typed = protocol.ok_reply(1, Point(1, 2), VALUES)
    other = protocol.ok_reply(2, {"d": Decimal("1.5")}, VALUES)
    client_values = Space("typed", types=[Decimal]).values
    replies = [protocol.decode_reply(item) for item in protocol.decode_replies(codec.encode_array([typed, other]),
                                                                               client_values)]
    refused, answered = replies
    assert isinstance(refused, protocol.Refused) and refused.req_id == 1
    assert isinstance(refused.error, DecodeError) and "extension type 16" in str(refused.error)
    assert answered == protocol.Answered(2, {"d": Decimal("1.5")})


def test_handlers_see_typed_values_and_the_partition_keeps_them_encoded() -> None:
    """A handler gets typed args and typed ctx.get values, puts typed values (kept as msgpack bytes with their
    extension codes), and its typed result survives a replay of the log: a retry answers it as written."""
    space = typed_space()
    seen: list[Any] = []

    @space.handler("m")
    def store(ctx: Any, key: str, args: Any) -> Any:
        seen.append((type(args), type(ctx.get(key))))
        ctx.put(key, args)
        return {"back": args, "at": datetime.datetime(2024, 1, 1, tzinfo=UTC)}

    partition = space.partition_of("m", "k")
    state = PartitionState(space, partition, DEFAULT_LIMITS)
    event = Event("e", datetime.datetime(2024, 2, 2, tzinfo=UTC), [Point(1, 1)])
    assert state.put("p1", "m", "k", Point(0, 0), None).error is None
    assert state.execute("x1", "store", "k", event).error is None
    batch = state.take_append()
    assert batch is not None
    state.on_append_committed()
    assert seen == [(Event, Point)]
    stored, _ = state.get_encoded("m", "k")  # type: ignore[misc]
    assert stored == space.values.encode(event) and state.get("m", "k") == (event, 2)

    fresh = PartitionState(space, partition, DEFAULT_LIMITS)
    fresh.replay(codec.decode_opaque(batch.payload, 1 << 20))
    assert fresh.get("m", "k") == (event, 2)
    retried = fresh.execute("x1", "store", "k", "ignored")
    reply = protocol.ok_reply(7, retried.value, space.values)
    assert reply == protocol.ok_reply(7, state.dedup["x1"], space.values)
    assert space.values.decode(reply, 1 << 20) == [7, protocol.OK, {"back": event,
                                                                   "at": datetime.datetime(2024, 1, 1, tzinfo=UTC)}]


def test_a_handler_putting_or_returning_an_unregistered_type_fails_the_operation() -> None:
    """ctx.put of an unregistered type, or a result of one, fails the operation with EncodeError; nothing staged."""
    space = typed_space()

    @space.handler("m")
    def put_bad(ctx: Any, key: str, args: Any) -> None:
        ctx.put(key, object())

    @space.handler("m")
    def return_bad(ctx: Any, key: str, args: Any) -> Any:
        return 1j

    state = PartitionState(space, space.partition_of("m", "k"), DEFAULT_LIMITS)
    for handler in ("put_bad", "return_bad"):
        outcome = state.execute(f"op-{handler}", handler, "k", None)
        assert isinstance(outcome.error, EncodeError) and "is not registered" in str(outcome.error)
    assert state.take_append() is None


def test_encode_errors_are_caller_errors() -> None:
    """The refusals of typed values are RequestErrors: the client never retries them."""
    for error in (EncodeError("x"), DecodeError("x")):
        assert isinstance(error, SpacegridError) and not error.retryable
