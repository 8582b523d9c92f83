"""JSON on the HTTP side, msgpack values in the grid: reading a bounded body, and converting both ways.

JSON has no bytes: a grid value's bytes go out as {"$base64": "..."}, and such an object (with that one key) coming in
is stored as bytes. Timestamps go out as ISO 8601 strings, floats that JSON can't hold (NaN, infinities) as strings;
a request's JSON may not hold NaN or infinities."""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import math
from typing import Any, Final

from starlette.requests import Request

from spacegrid.errors import DecodeError, PayloadTooLarge
from spacegrid.limits import WIRE_VALUE_DEPTH_MAX

BYTES_KEY: Final = "$base64"


async def read_body(request: Request, bytes_max: int) -> bytes:
    """The request's body, refused with PayloadTooLarge once it passes `bytes_max` (declared or as it streams in)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > bytes_max:
        raise PayloadTooLarge(f"a body of {declared} bytes is over the gateway's bound of {bytes_max} "
                              "(limits.GATEWAY_BODY_BYTES_MAX)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > bytes_max:
            raise PayloadTooLarge(f"the body is over the gateway's bound of {bytes_max} bytes "
                                  "(limits.GATEWAY_BODY_BYTES_MAX)")
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constant(name: str) -> Any:
    raise DecodeError(f"JSON may not hold {name}")


def parse_json(body: bytes, what: str, required: bool) -> Any:
    """The grid value of a JSON body (None for an empty one unless `required`); DecodeError for anything else."""
    if not body.strip():
        if required:
            raise DecodeError(f"{what}: the body is empty; send JSON")
        return None
    try:
        document = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{what}: the body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise DecodeError(f"{what}: the JSON is nested too deep") from None
    except ValueError as exc:  # json.JSONDecodeError
        raise DecodeError(f"{what}: the body is not JSON ({exc})") from None
    return from_json(document, 0)


def from_json(value: Any, depth: int) -> Any:
    """A parsed JSON document as a grid value: {"$base64": s} objects become bytes."""
    if depth > WIRE_VALUE_DEPTH_MAX:
        raise DecodeError(f"the JSON is nested deeper than {WIRE_VALUE_DEPTH_MAX} (limits.WIRE_VALUE_DEPTH_MAX)")
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get(BYTES_KEY), str):
            try:
                return base64.b64decode(value[BYTES_KEY], validate=True)
            except (binascii.Error, ValueError):
                raise DecodeError(f'{{"{BYTES_KEY}": ...}} holds no base64') from None
        return {key: from_json(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json(item, depth + 1) for item in value]
    return value


def to_json(value: Any) -> Any:
    """A grid value as something json.dumps writes as standard JSON."""
    if isinstance(value, dict):
        return {_key(key): to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return {BYTES_KEY: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)  # a typed value this gateway does not know (Decimal, UUID...): its text


def _key(key: Any) -> str:
    """A msgpack map key as a JSON object's (a str): JSON's spelling of anything else."""
    if isinstance(key, str):
        return key
    return json.dumps(to_json(key), separators=(",", ":"), ensure_ascii=False)


def dumps(document: Any) -> bytes:
    """Compact standard JSON (UTF-8) of a document already made of JSON types."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
