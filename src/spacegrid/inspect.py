"""Reading a running grid's state from KV (members and the partition table) for status and readiness."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from spacegrid.engine.subjects import Names
from spacegrid.engine.transport import Transport
from spacegrid.partitioning import PartitionTable
from spacegrid.security.access import Access


COUNTERS = ("failovers", "promoted", "rejoins", "fenced", "acquired", "released")
STORE_FIELDS = ("store_available", "write_behind_lag_records", "write_behind_lag_s", "write_through_waiting",
                "store_rows", "store_errors", "dead_letters", "loaded_rows")


@dataclass(frozen=True)
class GridStatus:
    space: str
    table: PartitionTable
    members: dict[str, dict[str, Any]]
    read_at_s: float = field(default_factory=time.time)

    def alive(self, member_id: str) -> bool:
        """Heard of within its heartbeat timeout (compares wall clocks: keep hosts NTP-synced)."""
        info = self.members.get(member_id)
        if info is None:
            return False
        return self.read_at_s - float(info.get("beat", 0)) <= float(info.get("heartbeat_timeout_s", 2.0))

    @property
    def active_partitions(self) -> int:
        """Partitions whose table owner is alive and reports them active: all of them means the grid is ready."""
        return sum(
            1 for partition, owner in enumerate(self.table.owners)
            if owner is not None and self.alive(owner) and partition in self.members[owner].get("active", ())
        )

    @property
    def ready(self) -> bool:
        return self.active_partitions == self.table.partition_count

    def to_json(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "table_version": self.table.version,
            "ready": self.ready,
            "members": [
                {"id": member_id, "alive": self.alive(member_id), "host": info.get("host"), "pid": info.get("pid"),
                 "partitions": self.table.owned_by(member_id), "active": info.get("active", []),
                 "requests": info.get("requests", 0), "appends": info.get("appends", 0),
                 "leaving": bool(info.get("leaving", False)), "log_missing": bool(info.get("log_missing", False)),
                 "metrics_url": info.get("metrics_url"), "backups": self.table.backed_up_by(member_id),
                 "ready_backups": info.get("ready_backups", []),
                 "backup_lag_records_max": max((lag[0] for lag in info.get("backup_lag", {}).values()), default=0),
                 **{counter: info.get(counter, 0) for counter in COUNTERS},
                 **{name: info[name] for name in STORE_FIELDS if name in info}, "maps": info.get("maps", {})}
                for member_id, info in sorted(self.members.items())
            ],
            "partitions": [
                {"partition": p, "owner": owner, "epoch": epoch, "backups": list(self.table.backups_of(p))}
                for p, (owner, epoch) in enumerate(zip(self.table.owners, self.table.epochs))
            ],
        }


async def read_status(nats_url: str, space: str, partition_count: int, connect_timeout_s: float = 5.0,
                      access: Access | None = None) -> GridStatus:
    transport = await Transport.connect(nats_url, "spacegrid-status", connect_timeout_s=connect_timeout_s,
                                        access=access)
    try:
        coord = await transport.coordination(Names(space))
        table, _ = await coord.read_table(partition_count)
        return GridStatus(space, table, await coord.read_members())
    finally:
        await transport.close()
