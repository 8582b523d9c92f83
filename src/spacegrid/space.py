"""What a user defines: a Space with its maps, handlers (entry processors), queries and key affinity."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from spacegrid.core.eviction import Eviction
from spacegrid.errors import DefinitionError, InvalidKey, UnknownHandler, UnknownMap
from spacegrid.limits import KEY_CHARS_MAX, PARTITIONS_MAX
from spacegrid.partitioning import partition_of
from spacegrid.values import Values
from spacegrid.valuetypes import ValueType

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


class EntryContext(Protocol):
    """What a handler sees: the entries of the partition it runs on, read-your-writes, staged until it returns."""

    partition: int

    def get(self, key: str, map: str | None = None) -> Any: ...
    def get_entry(self, key: str, map: str | None = None) -> tuple[Any, int] | None: ...
    def put(self, key: str, value: Any, map: str | None = None) -> None: ...
    def delete(self, key: str, map: str | None = None) -> bool: ...


class PartitionView(Protocol):
    """What a query sees: the committed entries of one partition, read-only."""

    partition: int

    def get(self, map: str, key: str) -> Any: ...
    def items(self, map: str) -> Any: ...
    def count(self, map: str) -> int: ...


Handler = Callable[[EntryContext, str, Any], Any]
QueryFn = Callable[[PartitionView, Any], Any]
MergeFn = Callable[[list[Any]], Any]


def _default_merge(results: list[Any]) -> Any:
    return results


@dataclass(frozen=True)
class MapDef:
    """A named keyed collection; `affinity` maps a key to its routing key (default: the part after the last '@').
    replication "sync" acknowledges a write once JetStream acknowledged its append; "async" once it is applied in
    the owner's memory (the append follows; a write the owner had not appended when it died is lost).
    persistence (when the PUs run with a store) is "write-behind" (the data pump persists committed writes in
    batches), "write-through" (a write is acknowledged once the store committed it too) or "none"."""

    name: str
    affinity: Callable[[str], str] | None = None
    replication: str = "sync"
    persistence: str = "write-behind"
    eviction: Eviction | None = None


REPLICATION_MODES = ("sync", "async")
PERSISTENCE_MODES = ("write-behind", "write-through", "none")

#: fn(map, key, value, version, error): called on the PU when the store rejected an entry for good (it went to the
#: dead-letter table); the value is decoded, None for a delete.
DeadLetterHook = Callable[[str, str, Any, int, str], None]


@dataclass(frozen=True)
class HandlerDef:
    """An entry processor on `map`; a read-only one runs on committed entries and is answered at once."""

    name: str
    map: str
    fn: Handler
    read_only: bool = False


@dataclass(frozen=True)
class QueryDef:
    name: str
    fn: QueryFn
    merge: MergeFn


@dataclass
class Space:
    """A partitioned space: the unit a grid serves. Define it once, import it in PUs and clients alike.
    `types` allows values of those types besides msgpack's own (spacegrid.valuetypes, docs/typed-values.md): ready-made
    ones by class (datetime, date, Decimal, set, frozenset, tuple, UUID) or ValueTypes; `values` is its codec."""

    name: str
    partitions: int = 64
    backup_count: int = 1
    maps: dict[str, MapDef] = field(default_factory=dict)
    handlers: dict[str, HandlerDef] = field(default_factory=dict)
    queries: dict[str, QueryDef] = field(default_factory=dict)
    dead_letter_hooks: list[DeadLetterHook] = field(default_factory=list)
    types: Sequence[ValueType | type] = ()
    values: Values = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise DefinitionError(f"space name {self.name!r} must match {_NAME.pattern}")
        if not 1 <= self.partitions <= PARTITIONS_MAX:
            raise DefinitionError(f"partitions must be between 1 and {PARTITIONS_MAX}, not {self.partitions}")
        if not 0 <= self.backup_count <= 3:
            raise DefinitionError(f"backup_count must be between 0 and 3, not {self.backup_count}")
        self.values = Values(self.name, self.types)

    def register_type(self, cls: type, code: int | None = None, encode: Callable[[Any], Any] | None = None,
                      decode: Callable[[Any], Any] | None = None) -> ValueType:
        """Allow values of exactly `cls` in this space's maps, arguments and results: a ready-made type by class
        (datetime, date, Decimal, set, frozenset, tuple, UUID), a dataclass or pydantic model with a `code` in
        16..127, any other class with a code, `encode(value) -> plain values` and `decode(plain) -> value`. Register
        it where the space is defined, so that every client and PU allows the same types."""
        return self.values.register(cls, code, encode, decode)

    def map(self, name: str, affinity: Callable[[str], str] | None = None, replication: str = "sync",
            persistence: str = "write-behind", eviction: Eviction | None = None) -> MapDef:
        """Declare a map. `affinity(key) -> routing key` puts related keys in one partition; `replication` is
        "sync" (default) or "async"; `persistence` is "write-behind" (default), "write-through" or "none";
        `eviction` bounds its entries in memory and expires them (see Eviction)."""
        if not _NAME.fullmatch(name):
            raise DefinitionError(f"map name {name!r} must match {_NAME.pattern}")
        if name in self.maps:
            raise DefinitionError(f"map {name!r} is declared twice")
        if replication not in REPLICATION_MODES:
            raise DefinitionError(f"map {name!r}: replication is one of {REPLICATION_MODES}, not {replication!r}")
        if persistence not in PERSISTENCE_MODES:
            raise DefinitionError(f"map {name!r}: persistence is one of {PERSISTENCE_MODES}, not {persistence!r}")
        if persistence == "write-through" and replication == "async":
            raise DefinitionError(f"map {name!r}: a write-through map can't be async (its writes wait for the store)")
        if eviction is not None and eviction.evicts and persistence == "none":
            raise DefinitionError(f"map {name!r}: eviction by size or idleness needs a store to read evicted entries "
                                  "back from; give it persistence='write-behind' (or use ttl_s alone)")
        definition = MapDef(name, affinity, replication, persistence, eviction)
        self.maps[name] = definition
        return definition

    def handler(self, map: str, name: str | None = None, read_only: bool = False) -> Callable[[Handler], Handler]:
        """Register `fn(ctx, key, args) -> result` to run atomically on the PU that owns `key` of `map`.
        A read_only handler may not write; it sees committed entries only and needs no log append."""

        def register(fn: Handler) -> Handler:
            handler_name = name or fn.__name__
            if map not in self.maps:
                raise DefinitionError(f"handler {handler_name!r} names undeclared map {map!r}")
            if handler_name in self.handlers:
                raise DefinitionError(f"handler {handler_name!r} is registered twice")
            self.handlers[handler_name] = HandlerDef(handler_name, map, fn, read_only)
            return fn

        return register

    def query(self, name: str | None = None, merge: MergeFn = _default_merge) -> Callable[[QueryFn], QueryFn]:
        """Register a read-only `fn(view, args)` run on every partition; `merge(results)` runs on the client."""

        def register(fn: QueryFn) -> QueryFn:
            query_name = name or fn.__name__
            if query_name in self.queries:
                raise DefinitionError(f"query {query_name!r} is registered twice")
            self.queries[query_name] = QueryDef(query_name, fn, merge)
            return fn

        return register

    def on_dead_letter(self, fn: DeadLetterHook) -> DeadLetterHook:
        """Register a compensation hook, called on the PU for each entry the store rejected for good."""
        self.dead_letter_hooks.append(fn)
        return fn

    def map_def(self, name: str) -> MapDef:
        try:
            return self.maps[name]
        except KeyError:
            raise UnknownMap(f"space {self.name!r} has no map {name!r}; maps: {sorted(self.maps)}") from None

    def handler_def(self, name: str) -> HandlerDef:
        try:
            return self.handlers[name]
        except KeyError:
            raise UnknownHandler(f"space {self.name!r} has no handler {name!r}; handlers: {sorted(self.handlers)}") from None

    def query_def(self, name: str) -> QueryDef:
        try:
            return self.queries[name]
        except KeyError:
            raise UnknownHandler(f"space {self.name!r} has no query {name!r}; queries: {sorted(self.queries)}") from None

    def routing_key(self, map: str, key: str) -> str:
        check_key(key)
        affinity = self.map_def(map).affinity
        if affinity is not None:
            return affinity(key)
        at = key.rfind("@")
        return key if at < 0 else key[at + 1 :]

    def partition_of(self, map: str, key: str) -> int:
        """The partition that owns `key` of `map`: stable across processes and Python versions."""
        return partition_of(self.routing_key(map, key), self.partitions)


def check_key(key: object) -> None:
    if not isinstance(key, str):
        raise InvalidKey(f"keys are str, not {type(key).__name__}")
    if not 0 < len(key) <= KEY_CHARS_MAX:
        raise InvalidKey(f"keys are 1 to {KEY_CHARS_MAX} characters, not {len(key)}")
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidKey(f"key {key!r} is not valid Unicode (lone surrogate)") from None
