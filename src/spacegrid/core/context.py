"""What user code sees of a partition: a handler's read-your-writes context that stages its writes, and a query's
read-only view of committed entries."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from spacegrid.core.entries import DELETED, VALUE, VERSION
from spacegrid.errors import HandlerError, VersionConflict, WrongPartition
from spacegrid.space import check_key

if TYPE_CHECKING:
    from spacegrid.core.partition import PartitionState


class HandlerContext:
    """A handler's view: read-your-writes over the overlay, writes staged until the handler returns."""

    __slots__ = ("state", "map_name", "staged", "partition", "committed_only", "checked")

    def __init__(self, state: PartitionState, map_name: str, committed_only: bool = False) -> None:
        self.state = state
        self.map_name = map_name
        self.partition = state.partition
        self.committed_only = committed_only
        self.staged: dict[tuple[str, str], Any] = {}
        self.checked: set[tuple[str, str]] = set()

    def check(self, map_name: str, key: str) -> None:
        """The key is valid and lives in this partition (checked once per key per operation)."""
        if (map_name, key) in self.checked or self.state.holds(map_name, key):
            return
        check_key(key)
        if self.state.space.partition_of(map_name, key) != self.partition:
            raise WrongPartition(
                f"key {key!r} of map {map_name!r} lives in partition {self.state.space.partition_of(map_name, key)}, "
                f"not {self.partition}: give related keys the same routing key (key@routing)"
            )
        self.checked.add((map_name, key))

    def get_entry(self, key: str, map: str | None = None) -> tuple[Any, int] | None:
        """A fresh copy of the value (mutating it changes nothing until put) and its version."""
        map_name = map or self.map_name
        self.check(map_name, key)
        staged = self.staged.get((map_name, key))
        if staged is not None:
            if staged is DELETED:
                return None
            value = self.state.values.decode(staged, self.state.limits.write_bytes_max)
            return value, self._staged_version(map_name, key)
        entry = self.state._lookup(map_name, key, self.committed_only)
        return None if entry is None else (self.state.values.decode(entry[VALUE], self.state.limits.write_bytes_max),
                                           entry[VERSION])

    def _staged_version(self, map_name: str, key: str) -> int:
        """The version a staged key will get: _stage numbers staged keys in insertion order."""
        return self.state.lsn_assigned + 1 + list(self.staged).index((map_name, key))

    def get(self, key: str, map: str | None = None) -> Any:
        found = self.get_entry(key, map)
        return None if found is None else found[0]

    def put(self, key: str, value: Any, map: str | None = None) -> None:
        map_name = map or self.map_name
        self.check(map_name, key)
        if self.committed_only:
            raise HandlerError("a read-only handler can't write: register it without read_only=True")
        if value is None:
            raise HandlerError("None can't be stored as a value: use ctx.delete(key)")
        self.staged[(map_name, key)] = self.state.values.encode_bounded(value, self.state.limits.write_bytes_max,
                                                                        "a value")

    def delete(self, key: str, map: str | None = None) -> bool:
        map_name = map or self.map_name
        existed = self.version_of(map_name, key) != 0
        if self.committed_only:
            raise HandlerError("a read-only handler can't write: register it without read_only=True")
        if existed:
            self.staged[(map_name, key)] = DELETED
        return existed

    def version_of(self, map_name: str, key: str) -> int:
        """The version the key has as this handler sees it, 0 if absent."""
        self.check(map_name, key)
        staged = self.staged.get((map_name, key))
        if staged is not None:
            return 0 if staged is DELETED else self._staged_version(map_name, key)
        entry = self.state._lookup(map_name, key, self.committed_only)
        return 0 if entry is None else entry[VERSION]

    def cas_put(self, key: str, value: Any, expected_version: int | None) -> int:
        self._expect(key, expected_version)
        self.put(key, value)
        return self._staged_version(self.map_name, key)

    def cas_delete(self, key: str, expected_version: int | None) -> bool:
        self._expect(key, expected_version)
        return self.delete(key)

    def _expect(self, key: str, expected_version: int | None) -> None:
        if expected_version is None:
            return
        current = self.version_of(self.map_name, key)
        if current != expected_version:
            raise VersionConflict(
                f"{self.map_name}[{key!r}] is at version {current}, not the expected {expected_version}", current
            )


class QueryView:
    """A query's read-only view of the committed entries of one partition."""

    __slots__ = ("state", "partition")

    def __init__(self, state: PartitionState) -> None:
        self.state = state
        self.partition = state.partition

    def get(self, map: str, key: str) -> Any:
        found = self.state.get(self.state.space.map_def(map).name, key)
        return None if found is None else found[0]

    def items(self, map: str) -> Iterator[tuple[str, Any]]:
        entries = self.state.maps.get(self.state.space.map_def(map).name, {})
        size_max, decode = self.state.limits.write_bytes_max, self.state.values.decode
        return ((key, decode(entry[VALUE], size_max)) for key, entry in entries.items())

    def count(self, map: str) -> int:
        return len(self.state.maps.get(self.state.space.map_def(map).name, {}))
