"""msgpack encoding and decoding of everything on the wire and in the log; nothing that can run code."""

from __future__ import annotations

from typing import Any

import msgpack

from spacegrid.errors import DecodeError, EncodeError, PayloadTooLarge

_packer_options = {"use_bin_type": True, "datetime": False}


def encode(obj: Any) -> bytes:
    """Encode a msgpack-able object (dict, list, tuple, str, int, float, bool, bytes, None)."""
    try:
        return msgpack.packb(obj, **_packer_options)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"value is not msgpack-encodable ({exc}); use dict, list, str, int, float, bool, bytes or None") from exc


def _refuse_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is not accepted")


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


def decode(data: bytes, size_max_bytes: int) -> Any:
    """Decode one msgpack document no larger than size_max_bytes. Extension types are refused, except msgpack's
    timestamp, which the library decodes itself and we turn into a float (seconds since the epoch)."""
    if len(data) > size_max_bytes:
        raise PayloadTooLarge(f"message of {len(data)} bytes exceeds the limit of {size_max_bytes} bytes")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_refuse_ext, timestamp=1)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as exc:
        raise DecodeError(f"undecodable message: {exc}") from exc


def encode_bounded(obj: Any, size_max_bytes: int, what: str) -> bytes:
    """Encode obj, refusing it with PayloadTooLarge past size_max_bytes."""
    data = encode(obj)
    if len(data) > size_max_bytes:
        raise PayloadTooLarge(f"{what} of {len(data)} bytes exceeds the limit of {size_max_bytes} bytes")
    return data
