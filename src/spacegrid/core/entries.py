"""How a partition holds an entry: a (value, version) tuple, and the marker of a staged delete."""

from __future__ import annotations

from typing import Any


class _Deleted:
    __repr__ = lambda self: "<deleted>"  # noqa: E731


DELETED: Any = _Deleted()


# An entry is a plain tuple (value, version): the value msgpack-encoded (or DELETED in the overlay), so that no
# reader can mutate it in place; the version is the partition log sequence number of the write (it only grows).
# Plain tuples of bytes and ints are not tracked by the cyclic garbage collector, which keeps full collections
# of a PU holding millions of entries short.
Entry = tuple[Any, int]
VALUE = 0
VERSION = 1
