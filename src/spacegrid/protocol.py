"""The request/reply wire format between clients and PUs: msgpack arrays, batched many to a message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from spacegrid import codec
from spacegrid.errors import DecodeError, RequestError, SpacegridError, error_from_wire, error_to_wire

# Request: [req_id, op, partition, map_or_name, key, arg1, arg2, op_id]
OP_GET: Final = 1
OP_PUT: Final = 2  # arg1 value, arg2 expected version or None
OP_DELETE: Final = 3  # arg2 expected version or None
OP_EXECUTE: Final = 4  # map_or_name handler name, arg1 args
OP_QUERY: Final = 5  # map_or_name query name, arg1 args
OP_GET_BACKUP: Final = 6  # a get answered by a hot backup: [value, version, lag_records, lag_s]
OP_VERSIONS: Final = 7  # reconciliation: a map's (key, version) pairs in a partition; arg1 after key, arg2 limit (0: digest)

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


Request = Get | GetBackup | Put | Delete | Execute | Query | Versions
READS: Final = (Get, Query, Versions)  # served only within the read lease (a read-only Execute too)
REQUEST_FIELDS: Final = 8


def request_id_of(raw: Any) -> int:
    """The request id of an undecodable request, if it has one, to address the error reply."""
    if isinstance(raw, list) and raw and type(raw[0]) is int:
        return int(raw[0])
    return MALFORMED_REQ_ID


def decode_request(raw: Any, partition_count: int) -> Request:
    """Validate one wire request [req_id, op, partition, name, key, arg1, arg2, op_id] and type it; a request
    that does not fit raises RequestError (the caller's fault) naming what is wrong."""
    if not isinstance(raw, list) or len(raw) != REQUEST_FIELDS:
        raise RequestError(f"a request is a list of {REQUEST_FIELDS} fields [req_id, op, partition, name, key, arg1, "
                           f"arg2, op_id], not {type(raw).__name__} of {len(raw) if isinstance(raw, list) else 1}")
    req_id, op, partition, name, key, arg1, arg2, op_id = raw
    if type(req_id) is not int or type(op) is not int:
        raise RequestError("req_id and op are integers")
    if type(partition) is not int or not 0 <= partition < partition_count:
        raise RequestError(f"partition must be an integer in 0..{partition_count - 1}, not {partition!r}")
    if type(name) is not str or type(key) is not str or type(op_id) is not str:
        raise RequestError("name, key and op_id are strings")
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
    raise RequestError(f"unknown operation {op!r}")


def _version(value: Any) -> int | None:
    if value is None or type(value) is int and value >= 0:
        return value
    raise RequestError(f"expected_version is an integer >= 0 (0: the key must be absent) or None, not {value!r}")


# ---- encoding ------------------------------------------------------------------------------------------------


def request(req_id: int, op: int, partition: int, name: str, key: str = "", arg1: Any = None,
            arg2: Any = None, op_id: str = "") -> bytes:
    return codec.encode([req_id, op, partition, name, key, arg1, arg2, op_id])


def ok_reply(req_id: int, payload: Any) -> bytes:
    return codec.encode([req_id, OK, payload])


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


def decode_reply(item: Any) -> Reply:
    """Type one reply [req_id, status, payload]; a reply of another shape raises DecodeError."""
    if not isinstance(item, list) or len(item) != 3 or type(item[0]) is not int:
        raise DecodeError(f"a reply is [req_id, status, payload], not {str(item)[:80]}")
    req_id, status, payload = item
    if status == OK:
        return Answered(req_id, payload)
    if type(status) is str and isinstance(payload, list) and len(payload) >= 1:
        return Refused(req_id, error_from_wire([status, *payload]))
    raise DecodeError(f"reply {req_id}: status {status!r} with payload {str(payload)[:80]} is neither a result nor "
                      "an error")


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
