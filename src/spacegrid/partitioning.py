"""The stable key-to-partition hash and the immutable, versioned partition table."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any


def partition_of(routing_key: str, partition_count: int) -> int:
    """crc32 of the UTF-8 routing key modulo the partition count; never Python's per-process hash()."""
    assert partition_count > 0
    return zlib.crc32(routing_key.encode("utf-8")) % partition_count


@dataclass(frozen=True, slots=True)
class PartitionTable:
    """Who owns each partition, at which epoch, and which members keep hot backups of it. Replaced wholesale,
    only by a newer version. Epochs change with owners only; backups come and go without a new epoch."""

    version: int
    owners: tuple[str | None, ...]
    epochs: tuple[int, ...]
    backups: tuple[tuple[str, ...], ...] = ()  # () means no backups anywhere

    def __post_init__(self) -> None:
        assert self.version >= 0
        assert len(self.owners) == len(self.epochs)
        assert not self.backups or len(self.backups) == len(self.owners)
        assert all(owner not in group for owner, group in zip(self.owners, self.backups)), "an owner is no backup"

    @classmethod
    def empty(cls, partition_count: int) -> PartitionTable:
        return cls(0, (None,) * partition_count, (0,) * partition_count)

    @property
    def partition_count(self) -> int:
        return len(self.owners)

    def owner(self, partition: int) -> str | None:
        return self.owners[partition]

    def backups_of(self, partition: int) -> tuple[str, ...]:
        return self.backups[partition] if self.backups else ()

    def owned_by(self, member_id: str) -> list[int]:
        return [p for p, owner in enumerate(self.owners) if owner == member_id]

    def backed_up_by(self, member_id: str) -> list[int]:
        return [p for p in range(self.partition_count) if member_id in self.backups_of(p)]

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"version": self.version, "owners": list(self.owners), "epochs": list(self.epochs)}
        if self.backups:
            wire["backups"] = [list(group) for group in self.backups]
        return wire

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> PartitionTable:
        backups = tuple(tuple(group) for group in data.get("backups", ()))
        return cls(int(data["version"]), tuple(data["owners"]), tuple(int(e) for e in data["epochs"]), backups)

    def successor(self, owners: tuple[str | None, ...],
                  backups: tuple[tuple[str, ...], ...] | None = None) -> PartitionTable:
        """The next table: every partition whose owner changes gets its epoch bumped."""
        assert len(owners) == len(self.owners)
        epochs = tuple(e + 1 if new != old else e for new, old, e in zip(owners, self.owners, self.epochs))
        return PartitionTable(self.version + 1, owners, epochs, self.backups if backups is None else backups)
