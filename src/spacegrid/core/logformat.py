"""The log's message format (ADR 0009): one message per PU tick holding one part per partition it wrote."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from spacegrid import codec
from spacegrid.errors import DecodeError

PART_FRAMING_BYTES_MAX = 16  # a part's [partition, bytes] framing in a message, at most (array, int, bin headers)


def encode_pu_message(parts: list[tuple[int, bytes]]) -> bytes:
    """A PU's tick: [[partition, part], ...], each part a partition's encoded append (PartitionState.take_append),
    kept as bytes so that a reader decodes only the parts of the partitions it follows."""
    return codec.encode_array([codec.encode([partition, part]) for partition, part in parts])


def parts_of(message: Any) -> Iterator[tuple[int, bytes]]:
    """(partition, part) of a decoded PU message; DecodeError if it is not one."""
    if not isinstance(message, list):
        raise DecodeError(f"not a log message: {type(message).__name__}")
    for item in message:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int) and isinstance(item[1], bytes)):
            raise DecodeError(f"not a partition's part of a log message: {item!r:.80}")
        yield item[0], item[1]
