"""The log's message format (core/logformat.py): a PU's tick as one part per partition."""

from __future__ import annotations

import pytest

from spacegrid import codec
from spacegrid.core.logformat import PART_FRAMING_BYTES_MAX, encode_pu_message, parts_of
from spacegrid.errors import DecodeError


def test_parts_come_back_in_order_as_bytes():
    """A message of three partitions' parts decodes to the same (partition, part) pairs, parts still encoded."""
    parts = [(3, codec.encode(["w", 1, []])), (0, b"\x90"), (4095, b"x" * 70_000)]
    assert list(parts_of(codec.decode(encode_pu_message(parts), 1 << 20))) == parts


def test_the_framing_of_a_part_stays_within_its_bound():
    """Each part adds at most PART_FRAMING_BYTES_MAX bytes to the message, for the largest partition number and a
    part of any size (the appender's size accounting relies on it)."""
    for size in (0, 15, 255, 256, 65_535, 65_536, 600_000):
        for partition in (0, 127, 4095):
            message = encode_pu_message([(partition, b"y" * size)] * 3)
            assert len(message) <= 3 * (size + PART_FRAMING_BYTES_MAX) + 1


@pytest.mark.parametrize("message", [{"w": 1}, [[1]], [["1", b""]], [[1, "text"]], [[1, b"", 2]]])
def test_what_is_not_a_pu_message_is_refused(message):
    """Anything but a list of [int, bytes] pairs raises DecodeError (a poisoned log message is not applied)."""
    with pytest.raises(DecodeError):
        list(parts_of(message))
