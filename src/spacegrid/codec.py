"""msgpack encoding and decoding of everything on the wire and in the log; nothing that can run code."""

from __future__ import annotations

import re
from typing import Any, Callable

import msgpack

from spacegrid.errors import DecodeError, EncodeError, PayloadTooLarge
from spacegrid.limits import (
    MSGPACK_DEPTH_MAX,
    WIRE_ARRAY_ITEMS_MAX,
    WIRE_BIN_BYTES_MAX,
    WIRE_EXT_BYTES_MAX,
    WIRE_MAP_ITEMS_MAX,
    WIRE_STR_BYTES_MAX,
    WIRE_TYPED_EXT_BYTES_MAX,
)

_packer_options = {"use_bin_type": True, "datetime": False}


def encode(obj: Any) -> bytes:
    """Encode a msgpack-able object (dict, list, tuple, str, int, float, bool, bytes, None)."""
    try:
        return msgpack.packb(obj, **_packer_options)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"value is not msgpack-encodable ({exc}); use dict, list, str, int, float, bool, bytes or None") from exc


def _refuse_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is not accepted")


def keep_ext(code: int, data: bytes) -> msgpack.ExtType:
    """An ext_hook for decode that keeps an extension value as it came (msgpack.ExtType, which encode writes back
    byte for byte): for what carries a space's typed values without looking at them (the log, replay, tools)."""
    return msgpack.ExtType(code, data)


def decode_opaque(data: bytes, size_max_bytes: int) -> Any:
    """decode, keeping extension values as they came (keep_ext), each at most limits.WIRE_TYPED_EXT_BYTES_MAX: a log
    record's results, read without the space's types and written back byte for byte."""
    return decode(data, size_max_bytes, ext_bytes_max=WIRE_TYPED_EXT_BYTES_MAX, ext_hook=keep_ext)


def encode_array(encoded_items: list[bytes]) -> bytes:
    """A msgpack array made of items that are already encoded (no re-encoding)."""
    n = len(encoded_items)
    if n < 16:
        header = bytes((0x90 | n,))
    elif n < 0x10000:
        header = b"\xdc" + n.to_bytes(2, "big")
    else:
        header = b"\xdd" + n.to_bytes(4, "big")
    return header + b"".join(encoded_items)


def decode(data: bytes, size_max_bytes: int, *, str_bytes_max: int = WIRE_STR_BYTES_MAX,
           bin_bytes_max: int = WIRE_BIN_BYTES_MAX, array_items_max: int = WIRE_ARRAY_ITEMS_MAX,
           map_items_max: int = WIRE_MAP_ITEMS_MAX, ext_bytes_max: int = WIRE_EXT_BYTES_MAX,
           depth_max: int = MSGPACK_DEPTH_MAX, ext_hook: Callable[[int, bytes], Any] | None = None) -> Any:
    """Decode one msgpack document no larger than size_max_bytes, each str, bin, array, map and extension value
    within its bound (spacegrid.limits.WIRE_*) and nested at most depth_max deep. Extension types are refused (unless
    `ext_hook(code, data)` says otherwise: keep_ext, or a space's registered types, spacegrid.values), except
    msgpack's timestamp, which the library decodes itself and we turn into a float (seconds since the epoch).
    A document past a bound raises PayloadTooLarge (its size) or DecodeError naming the bound and its value; any
    other undecodable document raises DecodeError saying why: all the sender's fault, never retried."""
    assert 1 <= depth_max <= MSGPACK_DEPTH_MAX, f"msgpack nests at most {MSGPACK_DEPTH_MAX} deep, not {depth_max}"
    if len(data) > size_max_bytes:
        raise PayloadTooLarge(f"a message of {len(data)} bytes exceeds size_max_bytes={size_max_bytes}")
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=ext_hook or _refuse_ext, timestamp=1,
                                max_str_len=str_bytes_max, max_bin_len=bin_bytes_max, max_array_len=array_items_max,
                                max_map_len=map_items_max, max_ext_len=ext_bytes_max)
    except msgpack.StackError as exc:  # msgpack's own depth bound: its fixed stack (limits.MSGPACK_DEPTH_MAX)
        raise DecodeError(f"arrays and maps nested deeper than msgpack's {MSGPACK_DEPTH_MAX} levels "
                          "(limits.MSGPACK_DEPTH_MAX)") from exc
    except msgpack.FormatError as exc:  # no message of its own
        raise DecodeError(f"not msgpack: the message of {len(data)} bytes holds a byte that starts no msgpack value "
                          "(0xc1, never used)") from exc
    except msgpack.ExtraData as exc:
        raise DecodeError(f"extra bytes after the first msgpack value ({len(exc.extra)} of {len(data)}): a message is "
                          "one msgpack document") from exc
    except (ValueError, TypeError) as exc:
        bounds = {"str": str_bytes_max, "bin": bin_bytes_max, "array": array_items_max, "map": map_items_max,
                  "ext": ext_bytes_max}
        raise DecodeError(_decode_failure(exc, bounds)) from exc
    if depth_max < MSGPACK_DEPTH_MAX:
        check_depth(value, depth_max, "a message", "depth_max")
    return value


# msgpack 1.x words a broken bound "<size> exceeds max_<kind>_len(<bound>)" (its C and pure-Python unpackers alike)
_BOUND_BROKEN = re.compile(r"(\d+) exceeds max_(str|bin|array|map|ext)_len\((\d+)\)")
_BOUND_WORDS = {  # msgpack's kind -> what it is, its unit, the name and value of decode's default bound
    "str": ("a string", "bytes", "WIRE_STR_BYTES_MAX", WIRE_STR_BYTES_MAX),
    "bin": ("a binary", "bytes", "WIRE_BIN_BYTES_MAX", WIRE_BIN_BYTES_MAX),
    "array": ("an array", "items", "WIRE_ARRAY_ITEMS_MAX", WIRE_ARRAY_ITEMS_MAX),
    "map": ("a map", "entries", "WIRE_MAP_ITEMS_MAX", WIRE_MAP_ITEMS_MAX),
    "ext": ("an extension value", "bytes (type byte included)", "WIRE_EXT_BYTES_MAX", WIRE_EXT_BYTES_MAX),
}


def _decode_failure(exc: Exception, bounds: dict[str, int]) -> str:
    """What a ValueError or TypeError of msgpack means, in words naming the bound broken, if one was."""
    broken = _BOUND_BROKEN.fullmatch(str(exc))
    if broken is not None:
        size, kind = broken.group(1), broken.group(2)
        what, unit, name, default = _BOUND_WORDS[kind]
        origin = f" (limits.{name})" if bounds[kind] == default else ""
        if kind == "ext" and bounds[kind] == WIRE_TYPED_EXT_BYTES_MAX:
            origin = " (limits.WIRE_TYPED_EXT_BYTES_MAX)"
        return f"{what} of {size} {unit} exceeds max_{kind}_len={bounds[kind]}{origin}"
    if isinstance(exc, TypeError):  # an array or map as a map key: unhashable
        return f"undecodable message: a map key must be a str, int, float, bool, bytes or nil ({exc})"
    if str(exc) == "Unpack failed: incomplete input":
        return "truncated message: it ends inside a msgpack value (or a header declares more than follows)"
    return f"undecodable message: {exc or type(exc).__name__}"


def check_depth(value: Any, depth_max: int, what: str, bound: str) -> None:
    """Raise DecodeError if arrays and maps nest deeper than depth_max in value (a flat list is 1 deep; a scalar 0).
    Breadth-first, one level at a time: no recursion, and it stops at the first level past the bound."""
    level = [value] if type(value) is list or type(value) is dict else []
    for _ in range(depth_max):
        if not level:
            return
        level = [item for container in level for item in (container.values() if type(container) is dict else container)
                 if type(item) is list or type(item) is dict]
    if level:
        raise DecodeError(f"{what} nests arrays and maps more than {bound}={depth_max} deep")


def encode_bounded(obj: Any, size_max_bytes: int, what: str) -> bytes:
    """Encode obj, refusing it with PayloadTooLarge past size_max_bytes."""
    data = encode(obj)
    if len(data) > size_max_bytes:
        raise PayloadTooLarge(f"{what} of {len(data)} bytes exceeds the limit of {size_max_bytes} bytes")
    return data
