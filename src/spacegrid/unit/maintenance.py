"""Background rounds of one PU that keep memory bounded: TTL expiry and eviction, and pruning the backups'
unpersisted-write sets against the store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from spacegrid.errors import StoreUnavailable
from spacegrid.limits import Limits
from spacegrid.store.base import Store
from spacegrid.unit.appender import Appender
from spacegrid.unit.backups import Backups
from spacegrid.unit.slot import Slot


async def eviction_loop(limits: Limits, member_id: str, active: Callable[[], list[Slot]], backups: Backups,
                        appender: Appender, stopping: Callable[[], bool]) -> None:
    """Expire entries past their TTL (a delete through the log, so backups and the store follow) and drop
    persisted entries from memory where a map is over its bounds or idle (on backups too)."""
    expiries = 0
    while not stopping():
        await asyncio.sleep(limits.eviction_interval_s)
        for slot in active():
            for map_name, key, version in slot.state.expired(limits.eviction_scan_max):
                expiries += 1
                outcome = slot.state.delete(f"expire:{member_id}:{expiries}", map_name, key, version)
                if outcome.error is None:
                    slot.state.cache[map_name][3] += 1
            appender.schedule(slot)
            slot.state.evict(limits.eviction_scan_max)
        for backup in list(backups.held.values()):
            backup.state.evict(limits.eviction_scan_max)


async def prune_backups_loop(limits: Limits, store: Store, backups: Backups, stopping: Callable[[], bool]) -> None:
    """Backups learn from the store what their owner persisted, so their unpersisted-writes set stays small."""
    while not stopping():
        await asyncio.sleep(limits.backup_prune_interval_s)
        try:
            for partition, backup in list(backups.held.items()):
                if backup.loaded:
                    backup.state.on_persisted((await store.progress(partition)).lsn)
        except StoreUnavailable:
            pass  # the next round prunes
