"""Eviction and expiry of one map's entries in one partition: recency, frequency, write times, and which entry
goes when a bound is reached. No I/O; the caller supplies the time."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from spacegrid.errors import DefinitionError

POLICIES = ("lru", "lfu")
LFU_SAMPLE = 16  # LFU evicts the least used among this many of the least recently used entries (as Redis samples)
ABSENT_KEYS_MAX = 4096  # keys confirmed absent from the store, remembered per map and partition


@dataclass(frozen=True)
class Eviction:
    """Bounds on a map's entries in memory. `max_entries` and `max_bytes` (keys plus encoded values) are for the
    whole map: each partition holds at most its share (rounded up). When a bound is reached, the `policy` ("lru"
    or "lfu") picks a persisted entry to drop from memory; a later read loads it again from the store. `ttl_s`
    deletes an entry (in the grid, its backups and the store) that long after its last write; `max_idle_s` drops
    it from memory after that long without a read or write."""

    max_entries: int | None = None
    max_bytes: int | None = None
    policy: str = "lru"
    ttl_s: float | None = None
    max_idle_s: float | None = None

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise DefinitionError(f"eviction policy is one of {POLICIES}, not {self.policy!r}")
        for name in ("max_entries", "max_bytes", "ttl_s", "max_idle_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise DefinitionError(f"eviction {name} must be positive, not {value}")

    @property
    def evicts(self) -> bool:
        """Drops entries from memory only (they stay in the store): needs a store behind the map."""
        return self.max_entries is not None or self.max_bytes is not None or self.max_idle_s is not None


class MapEviction:
    """What one partition knows to evict or expire entries of one map."""

    def __init__(self, config: Eviction, partitions: int) -> None:
        self.config = config
        self.entries_max = None if config.max_entries is None else math.ceil(config.max_entries / partitions)
        self.bytes_max = None if config.max_bytes is None else math.ceil(config.max_bytes / partitions)
        self.recency: OrderedDict[str, float] = OrderedDict()  # key -> last read or write (s), oldest first
        self.written: OrderedDict[str, float] = OrderedDict()  # key -> last write (s), oldest first (TTL)
        self.uses: dict[str, int] = {}  # LFU
        self.sizes: dict[str, int] = {}
        self.bytes = 0
        self.complete = True  # every entry of the map is in memory: a miss means absent, no store read needed
        self.absent: OrderedDict[str, None] = OrderedDict()  # keys the store confirmed absent since

    def touched(self, key: str, now_s: float) -> None:
        if key in self.recency:
            self.recency[key] = now_s
            self.recency.move_to_end(key)
            if self.config.policy == "lfu":
                self.uses[key] = self.uses.get(key, 0) + 1

    def written_at(self, key: str, size_bytes: int, now_s: float) -> None:
        self.absent.pop(key, None)
        self.recency[key] = now_s
        self.recency.move_to_end(key)
        if self.config.policy == "lfu":
            self.uses[key] = self.uses.get(key, 0) + 1
        if self.config.ttl_s is not None:
            self.written[key] = now_s
            self.written.move_to_end(key)
        self.bytes += size_bytes - self.sizes.get(key, 0)
        self.sizes[key] = size_bytes

    def removed(self, key: str) -> None:
        self.recency.pop(key, None)
        self.written.pop(key, None)
        self.uses.pop(key, None)
        self.bytes -= self.sizes.pop(key, 0)
        assert self.bytes >= 0, "tracked bytes never go negative"

    def remember_absent(self, key: str) -> None:
        self.absent[key] = None
        if len(self.absent) > ABSENT_KEYS_MAX:
            self.absent.popitem(last=False)

    def full(self) -> bool:
        """At or over a bound: loading more from the store would only evict it again."""
        return ((self.entries_max is not None and len(self.recency) >= self.entries_max)
                or (self.bytes_max is not None and self.bytes >= self.bytes_max))

    def expired(self, now_s: float, limit: int) -> list[str]:
        """Keys written more than ttl_s ago, oldest first."""
        if self.config.ttl_s is None:
            return []
        cutoff_s = now_s - self.config.ttl_s
        keys = []
        for key, written_s in self.written.items():
            if written_s > cutoff_s or len(keys) >= limit:
                break
            keys.append(key)
        return keys

    def evictable(self, now_s: float, is_dirty: Callable[[str], bool], scan_max: int) -> list[str]:
        """Persisted keys to drop from memory now: idle ones, then by policy while a bound is exceeded. Looks at
        no more than scan_max entries (dirty ones are skipped: evicted only once persisted)."""
        chosen: list[str] = []
        excess = self._excess()
        idle_cutoff_s = None if self.config.max_idle_s is None else now_s - self.config.max_idle_s
        scanned = 0
        candidates: list[str] = []
        for key, used_s in self.recency.items():
            if scanned >= scan_max:
                break
            scanned += 1
            if is_dirty(key):
                continue
            if idle_cutoff_s is not None and used_s <= idle_cutoff_s:
                chosen.append(key)
                continue
            if len(chosen) + len(candidates) >= excess + LFU_SAMPLE:
                break
            candidates.append(key)
        needed = max(0, excess - len(chosen))
        if needed and self.config.policy == "lfu":
            candidates.sort(key=lambda k: self.uses.get(k, 0))  # stable: among equals, least recent first
        return chosen + candidates[:needed]

    def _excess(self) -> int:
        """How many entries to drop to get within bounds (for bytes: estimated from the average entry size)."""
        excess = 0 if self.entries_max is None else max(0, len(self.recency) - self.entries_max)
        if self.bytes_max is not None and self.bytes > self.bytes_max and self.recency:
            average = self.bytes / len(self.recency)
            excess = max(excess, math.ceil((self.bytes - self.bytes_max) / max(average, 1.0)))
        return excess
