"""The request/reply wire format between clients and PUs: msgpack arrays, batched many to a message."""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import Any, Final

from spacegrid import codec
from spacegrid.errors import (
    DecodeError,
    InvalidKey,
    PayloadTooLarge,
    RequestError,
    SpacegridError,
    error_from_wire,
    error_to_wire,
)
from spacegrid.limits import (
    KEY_CHARS_MAX,
    REPLY_MESSAGE_BYTES_MAX,
    WIRE_NAME_CHARS_MAX,
    WIRE_OP_ID_CHARS_MAX,
    WIRE_VALUE_DEPTH_MAX,
    Limits,
)
from spacegrid.values import Undecodable, Values

PLAIN: Final = Values()  # the codec of a space that registered no type: msgpack's own types only

# Request: [req_id, op, partition, map_or_name, key, arg1, arg2, op_id]
OP_GET: Final = 1
OP_PUT: Final = 2  # arg1 value, arg2 expected version or None
OP_DELETE: Final = 3  # arg2 expected version or None
OP_EXECUTE: Final = 4  # map_or_name handler name, arg1 args
OP_QUERY: Final = 5  # map_or_name query name, arg1 args
OP_GET_BACKUP: Final = 6  # a get answered by a hot backup: [value, version, lag_records, lag_s]
OP_VERSIONS: Final = 7  # reconciliation: a map's (key, version) pairs in a partition; arg1 after key, arg2 limit (0: digest)
OP_SCAN: Final = 8  # a snapshot page: a map's committed entries in a partition, sorted; arg1 after key, arg2 limit

# Reply: [req_id, status, payload]; status OK or an error code, payload [message, current_version] on error.
OK: Final = 0
MALFORMED_REQ_ID: Final = -1


# ---- requests, decoded and validated on the PU -------------------------------------------------------------
# (slots, not frozen: a frozen dataclass costs four times as much to build, once per request on the hot path)


@dataclass(slots=True)
class Get:
    req_id: int
    partition: int
    map: str
    key: str


@dataclass(slots=True)
class GetBackup:
    """A get answered by a hot backup of the partition, with the backup's lag."""

    req_id: int
    partition: int
    map: str
    key: str


@dataclass(slots=True)
class Put:
    req_id: int
    partition: int
    map: str
    key: str
    value: Any
    expected_version: int | None
    op_id: str


@dataclass(slots=True)
class Delete:
    req_id: int
    partition: int
    map: str
    key: str
    expected_version: int | None
    op_id: str


@dataclass(slots=True)
class Execute:
    """Run a handler on the key's partition (op_id empty for a read-only handler)."""

    req_id: int
    partition: int
    handler: str
    key: str
    args: Any
    op_id: str


@dataclass(slots=True)
class Query:
    req_id: int
    partition: int
    query: str
    args: Any


@dataclass(slots=True)
class Versions:
    """Reconciliation: a page of a map's (key, version) pairs after `after_key` (limit 0: count and digest)."""

    req_id: int
    partition: int
    map: str
    after_key: str | None
    limit: int


@dataclass(slots=True)
class Scan:
    """A snapshot page: a map's committed entries (key, value, version) after `after_key`, at most `limit`."""

    req_id: int
    partition: int
    map: str
    after_key: str | None
    limit: int


Request = Get | GetBackup | Put | Delete | Execute | Query | Versions | Scan
READS: Final = (Get, Query, Versions, Scan)  # served only within the read lease (a read-only Execute too)
REQUEST_FIELDS: Final = 8


def decode_message(data: bytes, limits: Limits, values: Values = PLAIN) -> list[Any]:
    """A request message: one msgpack array of at most limits.requests_per_message_max requests, no longer than
    limits.request_payload_bytes_max, each str, bin, array, map and extension value within codec.decode's bounds
    (limits.WIRE_*), values of the space's registered types typed (a request holding one it can't decode is an
    Undecodable, refused alone by decode_request). Past a bound: PayloadTooLarge, DecodeError or RequestError naming
    it, the sender's fault."""
    if len(data) > limits.request_payload_bytes_max:
        raise PayloadTooLarge(f"a request message of {len(data)} bytes exceeds request_payload_bytes_max="
                              f"{limits.request_payload_bytes_max} (Limits.request_payload_bytes_max)")
    requests = values.decode_items(data, limits.request_payload_bytes_max)
    if type(requests) is not list:
        raise RequestError(f"a request message is a msgpack array of requests, not {_type_name(requests)}")
    if len(requests) > limits.requests_per_message_max:
        raise RequestError(f"a message of {len(requests)} requests exceeds requests_per_message_max="
                           f"{limits.requests_per_message_max} (Limits.requests_per_message_max)")
    return requests


def request_id_of(raw: Any) -> int:
    """The request id of an undecodable request, if it has one, to address the error reply (an int: not a bool,
    which msgpack keeps apart and Python counts as an int)."""
    if type(raw) is Undecodable:
        raw = raw.raw
    if isinstance(raw, list) and raw and type(raw[0]) is int:
        return int(raw[0])
    return MALFORMED_REQ_ID


def decode_request(raw: Any, partition_count: int) -> Request:
    """Validate one wire request [req_id, op, partition, name, key, arg1, arg2, op_id] and type it; a request
    that does not fit raises RequestError (the caller's fault) naming what is wrong and the bound it broke."""
    if type(raw) is Undecodable:
        raise raw.error
    if type(raw) is not list or len(raw) != REQUEST_FIELDS:
        raise RequestError(f"a request is a list of {REQUEST_FIELDS} fields [req_id, op, partition, name, key, arg1, "
                           f"arg2, op_id], not {_type_name(raw)}")
    req_id, op, partition, name, key, arg1, arg2, op_id = raw
    if type(req_id) is not int:
        raise RequestError(f"req_id must be an integer, not {_type_name(req_id)}")
    if type(op) is not int:
        raise RequestError(f"op must be an integer, not {_type_name(op)}")
    if type(partition) is not int or not 0 <= partition < partition_count:
        raise RequestError(f"partition must be an integer in 0..{partition_count - 1}, not {_short(partition)}")
    if (type(name) is not str or type(key) is not str or type(op_id) is not str or len(name) > WIRE_NAME_CHARS_MAX
            or len(key) > KEY_CHARS_MAX or len(op_id) > WIRE_OP_ID_CHARS_MAX):  # one test on the hot path
        _refuse_text("name", name, WIRE_NAME_CHARS_MAX, "limits.WIRE_NAME_CHARS_MAX", RequestError)
        _refuse_text("key", key, KEY_CHARS_MAX, "limits.KEY_CHARS_MAX", InvalidKey)
        _refuse_text("op_id", op_id, WIRE_OP_ID_CHARS_MAX, "limits.WIRE_OP_ID_CHARS_MAX", RequestError)
    if type(arg1) is list or type(arg1) is dict:
        codec.check_depth(arg1, WIRE_VALUE_DEPTH_MAX, "arg1", "limits.WIRE_VALUE_DEPTH_MAX")
    if type(arg2) is list or type(arg2) is dict:
        codec.check_depth(arg2, WIRE_VALUE_DEPTH_MAX, "arg2", "limits.WIRE_VALUE_DEPTH_MAX")
    if op == OP_GET:
        return Get(req_id, partition, name, key)
    if op == OP_PUT:
        if arg1 is None:
            raise RequestError("None can't be stored as a value: delete the key instead")
        return Put(req_id, partition, name, key, arg1, _version(arg2), op_id)
    if op == OP_DELETE:
        return Delete(req_id, partition, name, key, _version(arg2), op_id)
    if op == OP_EXECUTE:
        return Execute(req_id, partition, name, key, arg1, op_id)
    if op == OP_QUERY:
        return Query(req_id, partition, name, arg1)
    if op == OP_GET_BACKUP:
        return GetBackup(req_id, partition, name, key)
    if op == OP_VERSIONS:
        if arg1 is not None and type(arg1) is not str or type(arg2) is not int or arg2 < 0:
            raise RequestError("a versions request takes after_key (str or None) and limit (an integer >= 0)")
        return Versions(req_id, partition, name, arg1, arg2)
    if op == OP_SCAN:
        if arg1 is not None and type(arg1) is not str or type(arg2) is not int or arg2 < 1:
            raise RequestError("a scan request takes after_key (str or None) and limit (an integer >= 1)")
        return Scan(req_id, partition, name, arg1, arg2)
    raise RequestError(f"unknown operation {op}")


def _refuse_text(field: str, value: Any, chars_max: int, bound: str, error: type[RequestError]) -> None:
    """Raise the error of a name, key or op_id that is not a string of at most chars_max characters."""
    if type(value) is not str:
        raise RequestError(f"{field} must be a string, not {_type_name(value)}")
    if len(value) > chars_max:
        raise error(f"a {field} of {len(value)} characters exceeds {bound}={chars_max}")


_repr = reprlib.Repr()  # bounded in length and depth, whatever a sender nests: for error messages
_repr.maxstring = _repr.maxother = 60


def _short(value: Any) -> str:
    return _repr.repr(value)


def _type_name(value: Any) -> str:
    """A value's type for an error message, with the length of a str, bytes, list or dict."""
    if isinstance(value, str | bytes | list | dict):
        return f"{type(value).__name__} of {len(value)}"
    return f"{type(value).__name__} {_short(value)}"


def _version(value: Any) -> int | None:
    if value is None or type(value) is int and value >= 0:
        return value
    raise RequestError(f"expected_version is an integer >= 0 (0: the key must be absent) or None, not {_short(value)}")


# ---- encoding ------------------------------------------------------------------------------------------------


def request(req_id: int, op: int, partition: int, name: str, key: str = "", arg1: Any = None,
            arg2: Any = None, op_id: str = "", values: Values = PLAIN) -> bytes:
    """A request, its arguments encoded with the space's codec (values: Space.values)."""
    return values.encode([req_id, op, partition, name, key, arg1, arg2, op_id])


def ok_reply(req_id: int, payload: Any, values: Values = PLAIN) -> bytes:
    """A result, encoded with the space's codec (values: Space.values)."""
    return values.encode([req_id, OK, payload])


def entry_reply(req_id: int, entry: tuple[bytes, int] | None) -> bytes:
    """A get's reply [value, version], splicing the stored encoded value in without decoding it."""
    if entry is None:
        return ok_reply(req_id, None)
    return codec.encode_array([codec.encode(req_id), codec.encode(OK),
                               codec.encode_array([entry[0], codec.encode(entry[1])])])


def backup_entry_reply(req_id: int, entry: tuple[bytes, int] | None, lag_records: int, lag_s: float) -> bytes:
    """A backup read's reply [value, version, lag_records, lag_s] (value and version None if absent)."""
    value = entry[0] if entry is not None else codec.encode(None)
    version = codec.encode(entry[1] if entry is not None else None)
    body = codec.encode_array([value, version, codec.encode(lag_records), codec.encode(lag_s)])
    return codec.encode_array([codec.encode(req_id), codec.encode(OK), body])


def scan_reply(req_id: int, entries: list[tuple[str, bytes, int]], lsn: int, after_seq: int, idle: bool,
               more: bool) -> bytes:
    """A scan's reply [[[key, value, version], ...], lsn, after_seq, idle, more], splicing the stored encoded values
    in without decoding them."""
    rows = codec.encode_array([codec.encode_array([codec.encode(key), value, codec.encode(version)])
                               for key, value, version in entries])
    body = codec.encode_array([rows, codec.encode(lsn), codec.encode(after_seq), codec.encode(idle), codec.encode(more)])
    return codec.encode_array([codec.encode(req_id), codec.encode(OK), body])


def error_reply(req_id: int, error: SpacegridError) -> bytes:
    """[req_id, code, [message, current_version, exc_type]]: error_from_wire([code, *payload]) rebuilds it."""
    code, *payload = error_to_wire(error)
    return codec.encode([req_id, code, payload])


# ---- replies, decoded and validated on the client ------------------------------------------------------------


@dataclass(slots=True)
class Answered:
    """A request's result: a get's [value, version] (or None), a backup read's [value, version, lag_records,
    lag_s], a put's new version, a delete's existed flag, a handler's or query's return value."""

    req_id: int
    payload: Any


@dataclass(slots=True)
class Refused:
    """A request the PU did not serve, or whose operation failed: the error, rebuilt from its wire form."""

    req_id: int
    error: SpacegridError


Reply = Answered | Refused


def decode_replies(data: bytes, values: Values = PLAIN) -> list[Any]:
    """A reply message's replies, values of the space's registered types typed; a reply holding a value this side
    can't decode (an unregistered type) is an Undecodable, which decode_reply turns into its request's DecodeError."""
    return values.decode_items(data, REPLY_MESSAGE_BYTES_MAX)


def decode_reply(item: Any) -> Reply:
    """Type one reply [req_id, status, payload]; a reply of another shape raises DecodeError."""
    if type(item) is Undecodable:
        req_id = request_id_of(item)
        if req_id == MALFORMED_REQ_ID:
            raise item.error
        return Refused(req_id, item.error)
    if not isinstance(item, list) or len(item) != 3 or type(item[0]) is not int:
        raise DecodeError(f"a reply is [req_id, status, payload], not {_short(item)}")
    req_id, status, payload = item
    if status == OK:
        return Answered(req_id, payload)
    if type(status) is str and isinstance(payload, list) and len(payload) >= 1:
        return Refused(req_id, error_from_wire([status, *payload]))
    raise DecodeError(f"reply {req_id}: status {_short(status)} with payload {_short(payload)} is neither a result "
                      "nor an error")


def chunks(items: list[bytes], bytes_max: int, count_max: int) -> list[bytes]:
    """Pack encoded items into as few msgpack-array messages as fit under bytes_max and count_max each."""
    assert count_max >= 1
    messages: list[bytes] = []
    start = 0
    size = 0
    for i, item in enumerate(items):
        if i > start and (size + len(item) + 5 > bytes_max or i - start >= count_max):
            messages.append(codec.encode_array(items[start:i]))
            start, size = i, 0
        size += len(item)
    if start < len(items):
        messages.append(codec.encode_array(items[start:]))
    return messages
