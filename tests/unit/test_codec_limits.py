"""Unit tests of the wire's decode bounds (limits.py, issue 11 item 5): codec.decode, protocol.decode_message and
protocol.decode_request refuse what is past a bound with an error naming the bound and its value."""

from __future__ import annotations

import re

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spacegrid import codec, limits, protocol
from spacegrid.errors import CallerError, DecodeError, InvalidKey, PayloadTooLarge, RequestError, SpacegridError
from spacegrid.limits import DEFAULT_LIMITS, Limits
from spacegrid.space import Space


def nested(depth: int, leaf: object = 0, in_map: bool = False) -> object:
    """A value of arrays (or single-entry maps) nested `depth` deep around `leaf`, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = {"k": value} if in_map else [value]
    return value


def refusal(data: bytes, **bounds: int) -> str:
    """The message of the DecodeError that codec.decode raises on data (a 16 MiB size bound unless given)."""
    size_max_bytes = bounds.pop("size_max_bytes", 16 << 20)
    with pytest.raises(DecodeError) as refused:
        codec.decode(data, size_max_bytes, **bounds)
    message = str(refused.value)
    assert message, "a refusal always says why"
    return message


# ---- codec.decode: one bound per msgpack kind -------------------------------------------------------------------


def test_a_string_past_its_bound_is_refused_naming_the_bound():
    """A str of 2,000,000 bytes is past WIRE_STR_BYTES_MAX (1 MiB): DecodeError names the size, the bound, its value
    and where it is set; one at the bound decodes."""
    message = refusal(codec.encode("x" * 2_000_000))
    assert message == (f"a string of 2000000 bytes exceeds max_str_len={limits.WIRE_STR_BYTES_MAX} "
                       "(limits.WIRE_STR_BYTES_MAX)")
    assert codec.decode(codec.encode("x" * limits.WIRE_STR_BYTES_MAX), 2 << 20) == "x" * limits.WIRE_STR_BYTES_MAX


def test_a_bound_given_by_the_caller_is_named_without_the_default():
    """A caller's own bound is enforced and named by its value (limits.py is not named for it)."""
    assert refusal(codec.encode("abcdef"), str_bytes_max=5) == "a string of 6 bytes exceeds max_str_len=5"
    assert codec.decode(codec.encode("abcde"), 100, str_bytes_max=5) == "abcde"


def test_a_binary_past_its_bound_is_refused_naming_the_bound():
    """A bin past WIRE_BIN_BYTES_MAX is refused, naming max_bin_len and its value; a caller's smaller bound too."""
    assert refusal(codec.encode(b"\x00" * (limits.WIRE_BIN_BYTES_MAX + 1))) == (
        f"a binary of {limits.WIRE_BIN_BYTES_MAX + 1} bytes exceeds max_bin_len={limits.WIRE_BIN_BYTES_MAX} "
        "(limits.WIRE_BIN_BYTES_MAX)")
    assert refusal(codec.encode(b"123"), bin_bytes_max=2) == "a binary of 3 bytes exceeds max_bin_len=2"


def test_an_array_header_declaring_more_items_than_the_bound_is_refused_before_allocating():
    """An array32 header declaring 2**32-1 items in a 5-byte message is refused at once, naming WIRE_ARRAY_ITEMS_MAX
    (nothing is allocated for the items it claims); an array past a caller's bound is refused too."""
    assert refusal(b"\xdd\xff\xff\xff\xff") == (f"an array of 4294967295 items exceeds max_array_len="
                                                f"{limits.WIRE_ARRAY_ITEMS_MAX} (limits.WIRE_ARRAY_ITEMS_MAX)")
    assert refusal(codec.encode([1, 2, 3]), array_items_max=2) == "an array of 3 items exceeds max_array_len=2"
    assert codec.decode(codec.encode([1, 2]), 100, array_items_max=2) == [1, 2]


def test_a_map_past_its_bound_is_refused_naming_the_bound():
    """A map32 header declaring 2**32-1 entries, and a map past a caller's bound, are refused naming max_map_len."""
    assert refusal(b"\xdf\xff\xff\xff\xff") == (f"a map of 4294967295 entries exceeds max_map_len="
                                                f"{limits.WIRE_MAP_ITEMS_MAX} (limits.WIRE_MAP_ITEMS_MAX)")
    assert refusal(codec.encode({1: 1, 2: 2}), map_items_max=1) == "a map of 2 entries exceeds max_map_len=1"


def test_extension_values_are_bounded_to_the_timestamps_twelve_bytes():
    """Every form of msgpack's timestamp (4, 8 and 12 bytes) fits WIRE_EXT_BYTES_MAX and becomes a float; a longer
    extension value is refused by its size, naming max_ext_len, before any hook sees it."""
    for timestamp in (msgpack.Timestamp(1, 0), msgpack.Timestamp(1, 500_000_000), msgpack.Timestamp(2**40, 5)):
        assert codec.decode(msgpack.packb(timestamp), 100) == timestamp.to_unix()
    message = refusal(msgpack.packb(msgpack.ExtType(5, b"x" * 40)))
    assert re.fullmatch(r"an extension value of \d+ bytes \(type byte included\) exceeds max_ext_len=12 "
                        r"\(limits.WIRE_EXT_BYTES_MAX\)", message), message


# ---- codec.decode: nesting --------------------------------------------------------------------------------------


def test_msgpack_bounds_nesting_itself_at_1024_levels_without_recursion():
    """msgpack 1.x's C unpacker nests 1024 arrays and refuses the 1025th with StackError (measured, named
    limits.MSGPACK_DEPTH_MAX); codec.decode turns it into a DecodeError saying so, however deep the message goes."""
    value, depth = codec.decode(b"\x91" * limits.MSGPACK_DEPTH_MAX + b"\xc0", 1 << 20), 0
    while value is not None:  # walked, not compared: == on 1024 levels would recurse past Python's limit
        value, depth = value[0], depth + 1
    assert depth == limits.MSGPACK_DEPTH_MAX
    for depth in (limits.MSGPACK_DEPTH_MAX + 1, 100_000):
        assert refusal(b"\x91" * depth + b"\xc0") == (f"arrays and maps nested deeper than msgpack's "
                                                      f"{limits.MSGPACK_DEPTH_MAX} levels (limits.MSGPACK_DEPTH_MAX)")
    assert "MSGPACK_DEPTH_MAX" in refusal(b"\x81\xc0" * (limits.MSGPACK_DEPTH_MAX + 1) + b"\xc0")  # maps alike


def test_a_lower_depth_bound_is_checked_after_decoding():
    """With depth_max below msgpack's own, decode walks the document and refuses one nested deeper, naming it."""
    assert codec.decode(codec.encode(nested(3)), 100, depth_max=3) == nested(3)
    assert refusal(codec.encode(nested(4, in_map=True)), depth_max=3) == (
        "a message nests arrays and maps more than depth_max=3 deep")


def test_the_depth_check_walks_without_recursion_and_stops_past_the_bound():
    """check_depth goes level by level: a Python value 200,000 deep (past any recursion limit) is refused at once;
    scalars are 0 deep, a flat list or map 1."""
    with pytest.raises(DecodeError, match="more than bound=64 deep"):
        codec.check_depth(nested(200_000), 64, "v", "bound")
    codec.check_depth("scalar", 0, "v", "bound")
    codec.check_depth({"a": 1, "b": [2]}, 2, "v", "bound")
    with pytest.raises(DecodeError):
        codec.check_depth({"a": 1, "b": [2]}, 1, "v", "bound")


# ---- codec.decode: every other failure says why -----------------------------------------------------------------


@pytest.mark.parametrize("data, words", [
    (b"\xc1", "starts no msgpack value"),  # msgpack's FormatError has no message
    (b"\x92\x01", "truncated"),
    (b"\x01\x02", "extra bytes"),
    (b"\x81\x91\x01\x02", "map key"),  # an array as a map key: unhashable
    (b"\xa2\xff\xfe", "utf-8"),
    (b"\xd4\x05\x00", "extension type 5"),
])
def test_every_refusal_has_a_message_saying_why(data, words):
    """msgpack's own exceptions without a message (FormatError, StackError) or with a terse one become DecodeErrors
    that say what is wrong."""
    assert words in refusal(data)


def test_decode_errors_are_the_callers_fault_and_not_retried():
    """A refused message is the sender's fault: DecodeError and PayloadTooLarge are CallerErrors, not retryable."""
    for error in (DecodeError("x"), PayloadTooLarge("x")):
        assert isinstance(error, CallerError) and not error.retryable


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_are_refused_with_a_message(data):
    """Whatever bytes arrive, decode_message returns a list or raises a SpacegridError with a non-empty message:
    no other exception escapes."""
    try:
        assert type(protocol.decode_message(data, DEFAULT_LIMITS)) is list
    except SpacegridError as exc:
        assert isinstance(exc, RequestError) and str(exc)


# ---- protocol.decode_message: the message --------------------------------------------------------------------


def test_a_request_message_is_bounded_in_bytes_and_requests():
    """A message past request_payload_bytes_max is PayloadTooLarge, one past requests_per_message_max a
    RequestError, one that is not an array a RequestError: each names its bound and value."""
    bounded = Limits(request_payload_bytes_max=1024, write_bytes_max=256, append_bytes_max=512, requests_per_message_max=3)
    with pytest.raises(PayloadTooLarge, match=r"of 1027 bytes exceeds request_payload_bytes_max=1024 "
                                              r"\(Limits.request_payload_bytes_max\)"):
        protocol.decode_message(codec.encode("x" * 1024), bounded)
    with pytest.raises(RequestError, match=r"a message of 4 requests exceeds requests_per_message_max=3 "
                                           r"\(Limits.requests_per_message_max\)"):
        protocol.decode_message(codec.encode([[], [], [], []]), bounded)
    with pytest.raises(RequestError, match="a msgpack array of requests, not dict of 1"):
        protocol.decode_message(codec.encode({"a": 1}), bounded)
    assert protocol.decode_message(codec.encode([[1], [2], [3]]), bounded) == [[1], [2], [3]]


# ---- protocol.decode_request: each field ------------------------------------------------------------------------


def request(**fields: object) -> list[object]:
    """A valid get request [req_id, op, partition, name, key, arg1, arg2, op_id], with some fields replaced."""
    base = {"req_id": 7, "op": protocol.OP_GET, "partition": 0, "name": "m", "key": "k", "arg1": None, "arg2": None,
            "op_id": ""}
    return list({**base, **fields}.values())


def test_req_id_is_an_int_and_not_a_bool():
    """A bool is an int to Python but not a request id: decode_request refuses it clearly, and request_id_of does not
    address an error reply to it (the reply goes to MALFORMED_REQ_ID)."""
    for req_id, shown in ((True, "bool True"), (1.0, "float 1.0"), ("7", "str of 1"), (None, "NoneType None")):
        with pytest.raises(RequestError) as refused:
            protocol.decode_request(request(req_id=req_id), 16)
        assert str(refused.value) == f"req_id must be an integer, not {shown}"
        assert protocol.request_id_of(request(req_id=req_id)) == protocol.MALFORMED_REQ_ID
    assert protocol.request_id_of(request(req_id=2**64 - 1)) == 2**64 - 1
    with pytest.raises(RequestError, match="op must be an integer, not bool False"):
        protocol.decode_request(request(op=False), 16)
    with pytest.raises(RequestError, match="partition must be an integer in 0..15, not True"):
        protocol.decode_request(request(partition=True), 16)


def test_names_keys_and_operation_ids_are_bounded_in_characters():
    """name, key and op_id are strings of at most WIRE_NAME_CHARS_MAX, KEY_CHARS_MAX and WIRE_OP_ID_CHARS_MAX
    characters; one past its bound is refused naming it (a key with InvalidKey, as the client refuses it)."""
    for field, bound, name, error in (("name", limits.WIRE_NAME_CHARS_MAX, "WIRE_NAME_CHARS_MAX", RequestError),
                                      ("key", limits.KEY_CHARS_MAX, "KEY_CHARS_MAX", InvalidKey),
                                      ("op_id", limits.WIRE_OP_ID_CHARS_MAX, "WIRE_OP_ID_CHARS_MAX", RequestError)):
        protocol.decode_request(request(**{field: "x" * bound}), 16)
        with pytest.raises(error) as refused:
            protocol.decode_request(request(**{field: "x" * (bound + 1)}), 16)
        assert str(refused.value) == f"a {field} of {bound + 1} characters exceeds limits.{name}={bound}"


def test_the_name_bound_is_as_long_as_a_definition_allows():
    """WIRE_NAME_CHARS_MAX agrees with Space's names: a map name of that length is accepted, one longer refused, so
    no request for a name a space can define is refused by the wire."""
    space = Space("bounds", partitions=2)
    space.map("m" * limits.WIRE_NAME_CHARS_MAX)
    with pytest.raises(SpacegridError):
        space.map("m" * (limits.WIRE_NAME_CHARS_MAX + 1))


def test_values_and_arguments_are_bounded_in_depth():
    """arg1 and arg2 (a value, a handler's or query's arguments, an expected version) nest at most
    WIRE_VALUE_DEPTH_MAX deep, arrays and maps alike; one deeper is refused with a DecodeError naming the bound."""
    bound = limits.WIRE_VALUE_DEPTH_MAX
    put = request(op=protocol.OP_PUT, arg1=nested(bound), op_id="op-1")
    assert protocol.decode_request(put, 16).value == nested(bound)
    for field in ("arg1", "arg2"):
        for in_map in (False, True):
            with pytest.raises(DecodeError) as refused:
                protocol.decode_request(request(op=protocol.OP_EXECUTE, **{field: nested(bound + 1, in_map=in_map)}), 16)
            assert str(refused.value) == f"{field} nests arrays and maps more than limits.WIRE_VALUE_DEPTH_MAX={bound} deep"


def test_error_messages_stay_short_whatever_the_sender_nests_or_sends():
    """A field shown in an error is shown bounded (reprlib): a partition 1000 lists deep, which Python's repr can't
    show, or a megabyte expected version, give a short message."""
    for fields in ({"partition": nested(1000)}, {"op": protocol.OP_DELETE, "arg2": "v" * (1 << 20)}):
        with pytest.raises(RequestError) as refused:
            protocol.decode_request(request(**fields), 16)
        assert 0 < len(str(refused.value)) < 200


def test_a_value_at_the_depth_bound_stays_replayable_from_the_log():
    """The log nests a value 5 deeper than it is (part, ops, op, records, record): a put value at
    WIRE_VALUE_DEPTH_MAX still decodes with codec.decode's defaults, so the wire's bound never makes a log message
    that recovery can't read."""
    value = nested(limits.WIRE_VALUE_DEPTH_MAX)
    part = codec.encode([1, 1, [["op-1", None, [["kv", "k", 1, value, False]]]]])
    assert codec.decode(part, 1 << 20)[2][0][2][0][3] == value


def test_the_defaults_take_what_the_grid_writes_itself():
    """codec.decode's defaults accept a reconciliation page (versions_page_max pairs) in a reply and a full partition
    table: documents spacegrid writes itself never hit the wire's bounds."""
    page = [[f"k{i}", i] for i in range(DEFAULT_LIMITS.versions_page_max)]
    reply = codec.encode([[1, protocol.OK, {"pairs": page, "persisted_lsn": 3}]])
    assert len(codec.decode(reply, limits.REPLY_MESSAGE_BYTES_MAX)[0][2]["pairs"]) == DEFAULT_LIMITS.versions_page_max
    table = codec.encode({"version": 1, "owners": ["pu-a"] * limits.PARTITIONS_MAX})
    assert len(codec.decode(table, limits.KV_RECORD_BYTES_MAX)["owners"]) == limits.PARTITIONS_MAX
