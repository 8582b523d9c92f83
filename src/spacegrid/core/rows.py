"""Entries as the grid and every store exchange them, and their canonical digest: pure data, no I/O."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Row:
    """One entry as the store holds it: the msgpack-encoded value (None: deleted at `version`)."""

    map: str
    key: str
    value: bytes | None
    version: int  # the partition log sequence number (lsn) of the write


def digest_of(pairs: Iterable[tuple[str, int]]) -> str:
    """The canonical digest of (key, version) pairs: sha256 hex of the UTF-8 lines "key\\tversion\\n" in code-point
    order of keys. The grid and every store compute exactly this, so equal partitions compare in one query."""
    digest = hashlib.sha256()
    for key, version in sorted(pairs):
        digest.update(f"{key}\t{version}\n".encode())
    return digest.hexdigest()
