"""Redis as a target: redis-py with Lua scripts (reserve and release atomic on the server), AOF with appendfsync
`always` or `everysec` set by CONFIG SET for the run and restored afterwards, keys under a prefix of their own."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any, Final

from spacegrid.benchmark.history import Expected, ServerState
from spacegrid.benchmark.workload import (
    ACK_BEFORE_FSYNC,
    FSYNC_BEFORE_ACK,
    SEATS_PER_EVENT,
)
from spacegrid.errors import ConfigError

APPENDFSYNC_MODES: Final = ("always", "everysec")
SOCKET_TIMEOUT_S: Final = 30.0
POOL_WAIT_S: Final = 30.0
REWRITE_WAIT_S: Final = 60.0  # enabling the AOF rewrites it in the background: at most this long
REWRITE_POLL_S: Final = 0.05
PIPELINE_CHUNK: Final = 1000  # commands per pipeline while loading, reading back and cleaning up
SCAN_COUNT: Final = 1000

RESERVE_LUA: Final = """
for i = 2, #ARGV do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then return 0 end
end
for i = 2, #ARGV do redis.call('HSET', KEYS[2], ARGV[i], ARGV[1]) end
redis.call('HINCRBY', KEYS[1], 'sold', #ARGV - 1)
return 1
"""

RELEASE_LUA: Final = """
local n = 0
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[1] then
    redis.call('HDEL', KEYS[2], ARGV[i])
    n = n + 1
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[1], 'sold', -n) end
return n
"""


class RedisTarget:
    """Event E: hash `PREFIX e:E` (seats, sold); its held seats: hash `PREFIX s:E` (seat -> holder)."""

    def __init__(self, url: str, events: int, appendfsync: str, pool_size: int) -> None:
        if appendfsync not in APPENDFSYNC_MODES:
            raise ConfigError(f"appendfsync takes {'|'.join(APPENDFSYNC_MODES)}, not {appendfsync!r}")
        self.url = url
        self.events = events
        self.appendfsync = appendfsync
        self.pool_size = pool_size
        self.prefix = f"sgbench:{secrets.token_hex(4)}:"
        self.event_keys = [f"{self.prefix}e:{i}" for i in range(events)]
        self.seat_keys = [f"{self.prefix}s:{i}" for i in range(events)]
        self.saved: dict[str, str] = {}
        self.server: dict[str, Any] = {}

    async def open(self) -> None:
        import redis.asyncio as aioredis

        pool = aioredis.BlockingConnectionPool.from_url(self.url, max_connections=self.pool_size, timeout=POOL_WAIT_S,
                                                        socket_timeout=SOCKET_TIMEOUT_S, decode_responses=True)
        self.redis = aioredis.Redis(connection_pool=pool)
        self.reserve_script = self.redis.register_script(RESERVE_LUA)
        self.release_script = self.redis.register_script(RELEASE_LUA)
        try:
            for name in ("appendonly", "appendfsync"):
                self.saved[name] = (await self.redis.config_get(name))[name]
        except Exception as exc:
            await self.redis.aclose()
            raise ConfigError(f"Redis at {self.url} refused CONFIG GET ({exc}): the bench sets appendfsync itself") from exc
        await self.redis.config_set("appendonly", "yes")
        await self.redis.config_set("appendfsync", self.appendfsync)
        await self._wait_rewrite()
        info = await self.redis.info("server")
        self.server = {"version": info.get("redis_version"), "pid": info.get("process_id")}

    async def _wait_rewrite(self) -> None:
        """Until no AOF rewrite runs or is scheduled (turning the AOF on starts one), within REWRITE_WAIT_S."""
        deadline = time.monotonic() + REWRITE_WAIT_S
        while True:
            info = await self.redis.info("persistence")
            if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
                return
            if time.monotonic() > deadline:
                raise ConfigError(f"Redis's AOF rewrite did not finish within {REWRITE_WAIT_S:g} s")
            await asyncio.sleep(REWRITE_POLL_S)  # polling the server's state, bounded by the deadline

    async def close(self) -> None:
        """Delete the run's keys, then give the server back its appendfsync and appendonly."""
        try:
            keys = [key async for key in self.redis.scan_iter(match=f"{self.prefix}*", count=SCAN_COUNT)]
            for start in range(0, len(keys), PIPELINE_CHUNK):
                await self.redis.unlink(*keys[start:start + PIPELINE_CHUNK])
            if self.saved:
                await self.redis.config_set("appendfsync", self.saved["appendfsync"])
                if self.saved["appendonly"] != "yes":
                    await self.redis.bgrewriteaof()  # the AOF left behind holds no more than the keys others keep
                    await self._wait_rewrite()
                    await self.redis.config_set("appendonly", self.saved["appendonly"])
        finally:
            await self.redis.aclose()

    async def create_events(self) -> None:
        for start in range(0, self.events, PIPELINE_CHUNK):
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in self.event_keys[start:start + PIPELINE_CHUNK]:
                    pipe.hset(key, mapping={"seats": SEATS_PER_EVENT, "sold": 0})
                await pipe.execute()

    async def availability(self, event: int) -> None:
        await self.redis.hmget(self.event_keys[event], "seats", "sold")

    async def reserve(self, event: int, seats: tuple[int, ...], holder: str) -> bool:
        return bool(await self.reserve_script(keys=[self.event_keys[event], self.seat_keys[event]],
                                              args=[holder, *seats]))

    async def release(self, event: int, seats: tuple[int, ...], holder: str) -> int:
        return int(await self.release_script(keys=[self.event_keys[event], self.seat_keys[event]],
                                             args=[holder, *seats]))

    async def window_mark(self, phase: str) -> None:
        return None

    def pids(self) -> dict[str, int]:
        pid = self.server.get("pid")
        return {"redis-server": int(pid)} if pid else {}

    def describe(self) -> dict[str, Any]:
        return {"system": "Redis + Lua (redis-py)",
                "durability": FSYNC_BEFORE_ACK if self.appendfsync == "always" else ACK_BEFORE_FSYNC,
                "setting": f"appendonly yes, appendfsync {self.appendfsync}", "server": self.server,
                "restored": self.saved}

    async def state(self, expected: Expected) -> ServerState:
        holders: dict[tuple[int, int], str | None] = {seat: None for seat in expected.touched}
        sold: dict[int, int] = {}
        for start in range(0, self.events, PIPELINE_CHUNK):
            async with self.redis.pipeline(transaction=False) as pipe:
                for event in range(start, min(self.events, start + PIPELINE_CHUNK)):
                    pipe.hget(self.event_keys[event], "sold")
                    pipe.hgetall(self.seat_keys[event])
                replies = await pipe.execute()
            for i, event in enumerate(range(start, min(self.events, start + PIPELINE_CHUNK))):
                if replies[2 * i] is not None:
                    sold[event] = int(replies[2 * i])
                holders.update({(event, int(seat)): holder for seat, holder in replies[2 * i + 1].items()})
        return ServerState(holders, sold, {"events_found": len(sold), "events_found_ok": len(sold) == self.events})
