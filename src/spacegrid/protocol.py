"""The request/reply wire format between clients and PUs: msgpack arrays, batched many to a message."""

from __future__ import annotations

from typing import Any, Final

from spacegrid import codec
from spacegrid.errors import SpacegridError, error_to_wire

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
