"""A local grid for tests: a LocalGrid that also SIGKILLs the owner of a key and waits until its partition serves again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from spacegrid.engine.subjects import Names
from spacegrid.engine.transport import Transport
from spacegrid.errors import ConfigError, GridUnavailable
from spacegrid.launcher import LocalGrid, PuProcess

FAILOVER_TIMEOUT_S = 30.0  # kill_owner's default bound on waiting for the partition to serve again
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Failover:
    """What `GridUnderTest.kill_owner` did: the partition, the PU it SIGKILLed, and the PU that serves it now."""

    map: str
    key: str
    partition: int
    killed_member: str
    killed_pid: int
    new_owner: str
    took_s: float  # from the SIGKILL until the new owner reported the partition served (this process's clock)
    promoted: bool  # a hot backup took over, without replaying the log


@dataclass(frozen=True)
class Owner:
    """The PU that owns a key's partition: its member id in the table, and its process."""

    partition: int
    member: str
    pu: PuProcess


class GridUnderTest(LocalGrid):
    """A LocalGrid (real nats-server, real PU processes) with the fault a test of a handler needs most."""

    def owner_of(self, map_name: str, key: str) -> Owner:
        """The PU of this grid that owns `key` of `map_name` now (read from the partition table and heartbeats)."""
        partition = self.space.partition_of(map_name, key)
        status = self.status()
        member = status.table.owner(partition)
        if member is None:
            raise GridUnavailable(f"partition {partition} has no owner yet: wait_ready() first")
        pid = status.members.get(member, {}).get("pid")
        pu = next((pu for pu in self.pus if pu.pid == pid and pu.alive()), None)
        if pu is None:
            raise ConfigError(f"partition {partition} is owned by {member} (pid {pid}), not by a live PU of this grid")
        return Owner(partition, member, pu)

    def kill_owner(self, map_name: str, key: str, timeout_s: float = FAILOVER_TIMEOUT_S) -> Failover:
        """SIGKILL (by PID) the PU owning `key`'s partition, then block until another PU reports that it serves the
        partition (its `partition_recovered` event); GridUnavailable if none does within `timeout_s`. From async
        code, run it in a thread (`await asyncio.to_thread(grid.kill_owner, ...)`) so the loop's calls go on."""
        owner = self.owner_of(map_name, key)
        if sum(pu.alive() for pu in self.pus) < 2:
            raise ConfigError("kill_owner needs a second live PU to take the partition over: start the grid with pus=2")
        return asyncio.run(self._kill_and_wait(map_name, key, owner, timeout_s))

    async def _kill_and_wait(self, map_name: str, key: str, owner: Owner, timeout_s: float) -> Failover:
        """Follow the grid's events, SIGKILL the owner, and return once the partition's failover event arrives."""
        transport = await Transport.connect(self.url, "spacegrid-testing", connect_timeout_s=CONNECT_TIMEOUT_S,
                                            access=self.access)
        try:
            since_s = time.time() - 1.0  # the events stream starts by the second: the filter below drops older ones
            killed_at = time.monotonic()
            owner.pu.kill()
            events = transport.read_events(Names(self.space.name), since_s, True, timeout_s)
            try:
                event = await asyncio.wait_for(_recovery(events, owner), timeout_s)
            except asyncio.TimeoutError:
                raise GridUnavailable(f"partition {owner.partition} was not served again within {timeout_s:g}s "
                                      f"after the SIGKILL of {owner.member} (pid {owner.pu.pid}); see the PU logs "
                                      f"in {self.data_dir / 'logs'}") from None
        finally:
            await transport.close()
        return Failover(map_name, key, owner.partition, owner.member, owner.pu.pid, str(event["member"]),
                        time.monotonic() - killed_at, bool(event.get("promoted", False)))


async def _recovery(events: AsyncIterator[dict[str, object]], owner: Owner) -> dict[str, object]:
    """The first event saying another member serves `owner`'s partition in its place."""
    async for event in events:
        if (event.get("kind") == "partition_recovered" and event.get("partition") == owner.partition
                and event.get("previous") == owner.member):
            return event
    raise GridUnavailable(f"the grid's events stream ended before partition {owner.partition} served again")
