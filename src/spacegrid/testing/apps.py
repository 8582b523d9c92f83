"""A space for tests and benchmarks: plain maps, counters, and handlers that misbehave on purpose."""

from __future__ import annotations

import json
import os
from typing import Any

from spacegrid import EntryContext, Eviction, PartitionView, Space

space = Space("testapp", partitions=16)
space.map("kv")
space.map("counters")
space.map("cache", replication="async")
space.map("ledger", persistence="write-through")
space.map("bounded", eviction=Eviction(max_entries=64))  # at most 4 entries per partition in memory
space.map("sessions", persistence="none", eviction=Eviction(ttl_s=1.0))

APP = "spacegrid.testing.apps:space"
DEAD_LETTERS_ENV = "SPACEGRID_TEST_DEAD_LETTERS"


@space.on_dead_letter
def record_dead_letter(map_name: str, key: str, value: Any, version: int, error: str) -> None:
    """Compensation hook of the tests: append the rejected entry, as a JSON line, to the file the env names."""
    path = os.environ.get(DEAD_LETTERS_ENV)
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"map": map_name, "key": key, "value": value, "version": version,
                                  "error": error}) + "\n")


@space.handler("counters")
def incr(ctx: EntryContext, key: str, args: Any) -> int:
    """Add args (default 1) to the counter and return the new value."""
    value = int(ctx.get(key) or 0) + int(args or 1)
    ctx.put(key, value)
    return value


@space.handler("kv")
def put_group(ctx: EntryContext, key: str, args: Any) -> list[str]:
    """Write every key named in args["keys"] (all must share key's partition) with args["value"], atomically."""
    for name in args["keys"]:
        ctx.put(name, args["value"])
    return list(args["keys"])


@space.handler("kv")
def cas_value(ctx: EntryContext, key: str, args: Any) -> bool:
    """Value-based compare-and-set: put args["new"] if the value (None if absent) equals args["expected"]."""
    if ctx.get(key) != args["expected"]:
        return False
    ctx.put(key, args["new"])
    return True


@space.handler("kv")
def boom(ctx: EntryContext, key: str, args: Any) -> None:
    """Write, then raise: the write must be discarded."""
    ctx.put(key, "should-not-exist")
    raise RuntimeError("boom on purpose")


@space.handler("kv")
def spin(ctx: EntryContext, key: str, args: Any) -> None:
    """Write, then never return: the time limit must stop it and discard the write."""
    ctx.put(key, "should-not-exist")
    while True:
        pass


@space.handler("kv")
def unencodable(ctx: EntryContext, key: str, args: Any) -> Any:
    """Return something msgpack can't encode."""
    return {1, 2, 3}


@space.query(merge=sum)
def count(view: PartitionView, args: Any) -> int:
    """Entries of map args (default kv) over the grid."""
    return view.count(args or "kv")
