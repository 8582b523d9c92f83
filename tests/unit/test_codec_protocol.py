"""Unit tests of the msgpack codec, the request/reply wire format and the error hierarchy's wire codes."""

import random

import msgpack
import pytest

from spacegrid import codec, errors, protocol
from spacegrid.errors import (
    DecodeError,
    EncodeError,
    Fenced,
    NotOwner,
    PartitionUnavailable,
    PayloadTooLarge,
    RequestError,
    SpacegridError,
    VersionConflict,
    error_from_code,
    error_from_wire,
)


def all_error_classes():
    """The classes of spacegrid.errors (not private subclasses elsewhere, which reuse their parent's code)."""
    found, todo = [], [SpacegridError]
    while todo:
        cls = todo.pop()
        if cls.__module__ == "spacegrid.errors":
            found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


# ---- codec --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -1, 2**63 - 1, -(2**63), 1.5, "", "héllo", b"\x00\xff", [], [1, [2, [3]]], {"a": {"b": [1, None]}},
     {1: "int keys"}],
)
def test_round_trip(value):
    """Plain values survive encode then decode unchanged (bytes stay bytes, str stays str)."""
    assert codec.decode(codec.encode(value), 1 << 20) == value


def test_tuples_decode_as_lists():
    """A tuple is encoded as a msgpack array and comes back as a list."""
    assert codec.decode(codec.encode((1, (2, 3))), 100) == [1, [2, 3]]


@pytest.mark.parametrize("value", [{1, 2}, object(), 2**64, lambda: 0, {"k": {1}}])
def test_encode_refuses_unencodable(value):
    """Values msgpack can't encode raise EncodeError, a RequestError."""
    with pytest.raises(EncodeError):
        codec.encode(value)
    assert issubclass(EncodeError, RequestError)


def test_decode_refuses_ext_types():
    """A msgpack extension type is refused with DecodeError."""
    with pytest.raises(DecodeError, match="extension type 5"):
        codec.decode(msgpack.packb(msgpack.ExtType(5, b"xyz")), 100)
    with pytest.raises(DecodeError):
        codec.decode(msgpack.packb({"v": [msgpack.ExtType(1, b"")]}), 100)


def test_decode_turns_the_timestamp_ext_type_into_a_float():
    """The built-in timestamp extension (type -1), which msgpack decodes itself, becomes plain seconds: no object of
    another type reaches the grid."""
    assert codec.decode(msgpack.packb([msgpack.Timestamp(1, 500_000_000)]), 100) == [1.5]


def test_decode_refuses_oversize_messages():
    """A message longer than size_max_bytes raises PayloadTooLarge before decoding; one at the limit decodes."""
    data = codec.encode("x" * 100)
    with pytest.raises(PayloadTooLarge):
        codec.decode(data, len(data) - 1)
    assert codec.decode(data, len(data)) == "x" * 100


def test_encode_bounded():
    """encode_bounded returns the encoding up to the limit and raises PayloadTooLarge naming the thing above it."""
    data = codec.encode([1, 2, 3])
    assert codec.encode_bounded([1, 2, 3], len(data), "list") == data
    with pytest.raises(PayloadTooLarge, match="my value"):
        codec.encode_bounded([1, 2, 3], len(data) - 1, "my value")


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\xc1", b"\x92\x01", b"\xa3ab", b"\x01\x02", b"\xa2\xff\xfe", b"\x81\x91\x01\x02", b"\x91" * 100_000 + b"\x01",
     b"\xdd\xff\xff\xff\xff"],
)
def test_decode_refuses_garbage(garbage):
    """Truncated, reserved, trailing, invalid UTF-8, unhashable keys, too deep or lying lengths raise DecodeError."""
    with pytest.raises(DecodeError):
        codec.decode(garbage, 1 << 20)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 65535, 65536])
def test_encode_array_equals_packb_of_the_list(n):
    """encode_array of encoded items equals msgpack.packb of the list, across every array header size."""
    items = [i % 300 for i in range(n)]
    encoded = codec.encode_array([codec.encode(i) for i in items])
    assert encoded == msgpack.packb(items)
    assert codec.decode(encoded, 1 << 24) == items


# ---- protocol -----------------------------------------------------------------------------------------------


def test_request_layout():
    """A request decodes to [req_id, op, partition, name, key, arg1, arg2, op_id]."""
    data = protocol.request(7, protocol.OP_PUT, 3, "m", "k@r", {"v": 1}, 0, "op-1")
    assert codec.decode(data, 1 << 20) == [7, protocol.OP_PUT, 3, "m", "k@r", {"v": 1}, 0, "op-1"]
    assert codec.decode(protocol.request(1, protocol.OP_GET, 0, "m"), 100) == [1, protocol.OP_GET, 0, "m", "", None,
                                                                                None, ""]


def test_replies_round_trip_errors():
    """An ok reply carries its payload; an error reply rebuilds the same error class, message and current_version."""
    assert codec.decode(protocol.ok_reply(3, [1, "x"]), 100) == [3, protocol.OK, [1, "x"]]
    req_id, status, payload = codec.decode(protocol.error_reply(4, VersionConflict("stale", 17)), 1000)
    rebuilt = error_from_wire([status, *payload])
    assert (req_id, type(rebuilt), str(rebuilt), rebuilt.current_version) == (4, VersionConflict, "stale", 17)
    req_id, status, payload = codec.decode(protocol.error_reply(5, NotOwner("moved")), 1000)
    assert (status, payload) == ("not_owner", ["moved", 0, ""])


@pytest.mark.parametrize("bytes_max", [16, 40, 100, 1000, 1 << 20])
def test_chunks_split_under_the_limit_and_keep_order(bytes_max):
    """chunks packs items into arrays no larger than bytes_max that decode to the items, in order."""
    rng = random.Random(bytes_max)
    values = [protocol.ok_reply(i, "x" * rng.randint(0, 8)) for i in range(200)]
    messages = protocol.chunks(values, bytes_max, 4096)
    assert all(len(m) <= bytes_max for m in messages)
    decoded = [item for m in messages for item in codec.decode(m, 1 << 20)]
    assert decoded == [codec.decode(v, 1 << 20) for v in values]
    if bytes_max == 1 << 20:
        assert len(messages) == 1


def test_chunks_of_nothing_is_no_message():
    """No items give no messages."""
    assert protocol.chunks([], 100, 4096) == []


def test_chunks_gives_an_oversize_item_its_own_message():
    """An item larger than the limit still goes out, alone, and its neighbours are not lost."""
    small, big = codec.encode(1), codec.encode("y" * 200)
    messages = protocol.chunks([small, big, small], 50, 4096)
    assert [codec.decode(m, 1 << 20) for m in messages] == [[1], ["y" * 200], [1]]


def test_chunks_with_many_items_crosses_array_header_sizes():
    """70k tiny items in one chunk decode correctly past the 16-bit array header."""
    items = [codec.encode(i % 100) for i in range(70_000)]
    (message,) = protocol.chunks(items, 1 << 20, 100_000)
    assert codec.decode(message, 1 << 20) == [i % 100 for i in range(70_000)]


def test_chunks_respect_the_count_limit():
    """No message carries more items than count_max, and together they carry every item in order."""
    items = [codec.encode(i) for i in range(10_001)]
    messages = protocol.chunks(items, 1 << 20, 4096)
    decoded = [codec.decode(m, 1 << 20) for m in messages]
    assert [len(d) for d in decoded] == [4096, 4096, 1809]
    assert [x for d in decoded for x in d] == list(range(10_001))


# ---- errors -------------------------------------------------------------------------------------------------


def test_error_codes_are_unique():
    """No two error classes share a wire code."""
    codes = [cls.code for cls in all_error_classes()]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda cls: cls.__name__)
def test_error_from_code_rebuilds_each_class(cls):
    """error_from_code gives back the class that owns a code, with its message."""
    err = error_from_code(cls.code, "the message")
    assert type(err) is cls
    assert str(err) == "the message"


def test_error_from_code_keeps_current_version():
    """A VersionConflict rebuilt from its code keeps current_version."""
    err = error_from_code(VersionConflict.code, "conflict!", 42)
    assert isinstance(err, VersionConflict)
    assert err.current_version == 42


def test_unknown_code_is_a_plain_spacegrid_error():
    """An unknown code becomes a plain SpacegridError with the message."""
    err = error_from_code("from-a-newer-version", "hm")
    assert type(err) is SpacegridError
    assert str(err) == "hm"
    assert err.retryable is False


@pytest.mark.parametrize("cls", [NotOwner, PartitionUnavailable, Fenced, errors.RoutingError])
def test_routing_errors_are_retryable(cls):
    """NotOwner, PartitionUnavailable and Fenced (routing errors) are retryable."""
    assert cls("x").retryable is True


@pytest.mark.parametrize("cls", [c for c in all_error_classes() if issubclass(c, RequestError)],
                         ids=lambda cls: cls.__name__)
def test_request_errors_are_not_retryable(cls):
    """Every RequestError subclass is not retryable: the same request fails the same way."""
    assert cls("x").retryable is False


def test_unknown_outcomes_are_retryable_but_not_not_applied():
    """CommitUnknown and GridTimeout are retried (with the same operation id) but don't claim the operation was not
    applied; VersionConflict and HandlerError are the caller's and not retried."""
    for cls in (errors.CommitUnknown, errors.GridTimeout):
        assert cls("x").retryable is True and not isinstance(cls("x"), errors.NotApplied)
    for cls in (VersionConflict, errors.HandlerError):
        assert cls("x").retryable is False


def test_requests_are_typed_and_validated_on_decode():
    """decode_request gives one dataclass per operation and refuses wrong shapes and types with RequestError
    (the caller's fault), naming what is wrong; a too-short request still has its id for the error reply."""
    from spacegrid.errors import RequestError

    put = protocol.decode_request([7, protocol.OP_PUT, 3, "m", "k", {"v": 1}, 0, "op-1"], 16)
    assert put == protocol.Put(7, 3, "m", "k", {"v": 1}, 0, "op-1")
    assert protocol.decode_request([8, protocol.OP_GET, 0, "m", "k", None, None, ""], 16) == protocol.Get(8, 0, "m", "k")
    assert isinstance(protocol.decode_request([9, protocol.OP_VERSIONS, 1, "m", "", None, 0, ""], 16),
                      protocol.Versions)
    for bad, why in [([7, protocol.OP_GET], "list of 8 fields"), ([7, protocol.OP_GET, 99, "m", "k", None, None, ""], "partition"),
                     ([7, protocol.OP_GET, 0, 5, "k", None, None, ""], "name must be a string"),
                     ([7, protocol.OP_PUT, 0, "m", "k", None, None, "op"], "None can't be stored"),
                     ([7, protocol.OP_PUT, 0, "m", "k", 1, -1, "op"], "expected_version"),
                     ([7, 99, 0, "m", "k", 1, None, "op"], "unknown operation"),
                     (["x", protocol.OP_GET, 0, "m", "k", None, None, ""], "req_id must be an integer")]:
        with pytest.raises(RequestError, match=why):
            protocol.decode_request(bad, 16)
    assert protocol.request_id_of([7, protocol.OP_GET]) == 7
    assert protocol.request_id_of("junk") == protocol.MALFORMED_REQ_ID


def test_replies_are_typed_and_validated_on_decode():
    """decode_reply gives Answered or Refused (with the error rebuilt) and refuses other shapes with DecodeError."""
    from spacegrid.errors import DecodeError, NotOwner

    assert protocol.decode_reply(codec.decode(protocol.ok_reply(3, [1, 2]), 100)) == protocol.Answered(3, [1, 2])
    refused = protocol.decode_reply(codec.decode(protocol.error_reply(4, NotOwner("moved")), 100))
    assert isinstance(refused, protocol.Refused) and isinstance(refused.error, NotOwner) and refused.req_id == 4
    for bad in ([1, 2], ["a", 0, None], [1, 5, None], [1, "not_owner", "msg"]):
        with pytest.raises(DecodeError):
            protocol.decode_reply(bad)


def test_a_deliverys_stream_sequence_and_pending_count_are_read_off_its_ack_subject():
    """delivery_position agrees with nats-py's Metadata for both ack-subject forms and refuses anything else."""
    from nats.aio.msg import Msg

    from spacegrid.engine.changelog import delivery_position

    v1 = "$JS.ACK.SG_t.consumer1.1.4127.12.1733150000000000000.7"
    v2 = "$JS.ACK._.ACCHASH.SG_t.consumer1.1.4127.12.1733150000000000000.7.rnd"
    for reply in (v1, v2):
        meta = Msg.Metadata._from_reply(reply)
        assert delivery_position(reply) == (meta.sequence.stream, meta.num_pending) == (4127, 7)
    with pytest.raises(ValueError):
        delivery_position("_INBOX.abc.1")
