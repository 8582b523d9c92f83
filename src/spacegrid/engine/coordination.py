"""Membership heartbeats and the partition table in JetStream KV; the table changes only by compare-and-set."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue

from spacegrid import codec
from spacegrid.engine.subjects import Names
from spacegrid.errors import ConfigError, GridUnavailable
from spacegrid.limits import KV_RECORD_BYTES_MAX
from spacegrid.partitioning import PartitionTable

log = logging.getLogger("spacegrid.coordination")

KV_DELETES = ("DEL", "PURGE")
CONFIG_KEY = "config"  # the grid's configuration, next to the table's key in the table bucket
NOT_READY: tuple[type[Exception], ...] = (NatsTimeoutError, NoRespondersError, ServiceUnavailableError,
                                          NoStreamResponseError)  # JetStream electing leaders, or not up yet


async def _bucket(js: JetStreamContext, name: str, replicas: int, ttl_s: float | None, create: bool) -> KeyValue:
    try:
        return await js.key_value(name)
    except (BucketNotFoundError, NotFoundError):
        if not create:
            raise GridUnavailable(f"KV bucket {name} does not exist: no PU of this space has started yet") from None
    return await js.create_key_value(bucket=name, history=1, replicas=replicas, ttl=ttl_s)


class Coordination:
    """The space's two KV buckets: members (heartbeats) and table (the versioned partition table)."""

    def __init__(self, names: Names, members: KeyValue, table: KeyValue) -> None:
        self.names = names
        self.members = members
        self.table = table

    @classmethod
    async def open(cls, js: JetStreamContext, names: Names, replicas: int = 1, create: bool = False,
                   member_ttl_s: float = 60.0) -> Coordination:
        members = await _bucket(js, names.members_bucket, replicas, member_ttl_s, create)
        table = await _bucket(js, names.table_bucket, replicas, None, create)
        return cls(names, members, table)

    # ---- membership ----------------------------------------------------------------------------------------

    async def register(self, member_id: str, info: dict[str, Any]) -> int:
        """Create the member's record (also over a deleted one); returns its revision."""
        return int(await self.members.create(member_id, codec.encode(info)))

    async def renew(self, member_id: str, info: dict[str, Any], revision: int) -> int | None:
        """Heartbeat by compare-and-set: the new revision, or None if the record was removed or changed
        meanwhile (the coordinator declared this member dead)."""
        try:
            return int(await self.members.update(member_id, codec.encode(info), last=revision))
        except KeyWrongLastSequenceError:
            return None

    async def read_member(self, member_id: str) -> tuple[dict[str, Any], int] | None:
        """The member's record and its revision, or None if it was deleted or never existed."""
        try:
            entry = await self.members.get(member_id)
        except (KeyNotFoundError, NotFoundError):
            return None
        if not entry.value:
            return None
        return self.decode_member(entry.value), int(entry.revision or 0)

    async def read_members(self) -> dict[str, dict[str, Any]]:
        """Every member's record by member id (none: an empty dict)."""
        try:
            keys = await self.members.keys()
        except NoKeysError:
            return {}
        members: dict[str, dict[str, Any]] = {}
        for key in keys:
            found = await self.read_member(key)
            if found is not None:
                members[key] = found[0]
        return members

    async def remove_member(self, member_id: str, revision: int | None = None) -> bool:
        """Delete a member's record: on graceful leave, or by the coordinator once it is dead. With a revision,
        only if the member has not heartbeated since (False then)."""
        try:
            await self.members.delete(member_id, last=revision)
        except (KeyNotFoundError, NotFoundError):
            return True
        except KeyWrongLastSequenceError:
            return False
        except BadRequestError as exc:
            if getattr(exc, "err_code", None) == 10071:
                return False
            raise
        return True

    # ---- the table -----------------------------------------------------------------------------------------

    async def read_table(self, partition_count: int) -> tuple[PartitionTable, int]:
        """The current table and its KV revision (revision 0: none written yet)."""
        try:
            entry = await self.table.get(self.names.table_key)
        except (KeyNotFoundError, NotFoundError):
            return PartitionTable.empty(partition_count), 0
        except NOT_READY as exc:
            raise GridUnavailable(f"the partition table could not be read: JetStream did not answer ({exc!r})") from exc
        table = PartitionTable.from_wire(codec.decode(entry.value, KV_RECORD_BYTES_MAX))
        if table.partition_count != partition_count:
            raise ConfigError(
                f"space {self.names.space!r} was created with {table.partition_count} partitions, "
                f"this definition says {partition_count}; the partition count can't change"
            )
        return table, int(entry.revision or 0)

    async def write_table(self, table: PartitionTable, revision: int) -> int | None:
        """Compare-and-set: the new revision, or None if someone else wrote first."""
        data = codec.encode(table.to_wire())
        try:
            if revision == 0:
                return int(await self.table.create(self.names.table_key, data))
            return int(await self.table.update(self.names.table_key, data, last=revision))
        except KeyWrongLastSequenceError:
            return None
        except Exception as exc:  # nats-py raises BadRequestError for a lost create race on some versions
            if "wrong last sequence" in str(exc) or "key exists" in str(exc):
                return None
            raise

    # ---- the grid's configuration (key "config" in the table bucket; spacegrid.config.GridConfig's wire form) --

    async def read_config(self) -> tuple[dict[str, Any] | None, int]:
        """The configuration's wire form and its KV revision; (None, 0) if none was written (or it was deleted)."""
        try:
            entry = await self.table.get(CONFIG_KEY)
        except (KeyNotFoundError, NotFoundError):
            return None, 0
        except NOT_READY as exc:
            raise GridUnavailable(f"the grid's configuration could not be read: JetStream did not answer ({exc!r})") \
                from exc
        if not entry.value:
            return None, 0
        wire = codec.decode(entry.value, KV_RECORD_BYTES_MAX)
        if not isinstance(wire, dict):
            raise ConfigError(f"the grid's configuration ({self.names.table_bucket}/{CONFIG_KEY}) is not a map")
        return wire, int(entry.revision or 0)

    async def create_config(self, wire: dict[str, Any]) -> int | None:
        """Write the configuration only if there is none: its revision, or None if one exists already.
        GridUnavailable if JetStream did not answer (written or not: read it again)."""
        try:
            return int(await self.table.create(CONFIG_KEY, codec.encode(wire)))
        except KeyWrongLastSequenceError:
            return None
        except NOT_READY as exc:
            raise GridUnavailable(f"the grid's configuration could not be written: JetStream did not answer "
                                  f"({exc!r})") from exc
        except Exception as exc:  # nats-py raises BadRequestError for a lost create race on some versions
            if "wrong last sequence" in str(exc) or "key exists" in str(exc):
                return None
            raise

    async def replace_config(self, wire: dict[str, Any], revision: int) -> int | None:
        """Compare-and-set over the revision read (0: create-only): the new revision, or None if it changed."""
        if revision == 0:
            return await self.create_config(wire)
        try:
            return int(await self.table.update(CONFIG_KEY, codec.encode(wire), last=revision))
        except KeyWrongLastSequenceError:
            return None
        except BadRequestError as exc:  # some nats-py versions: a lost compare-and-set as a bad request
            if "wrong last sequence" in str(exc):
                return None
            raise

    # ---- watching ------------------------------------------------------------------------------------------

    async def watch(self, bucket: KeyValue, key: str, on_entry: Callable[[str, bytes | None, int], Awaitable[None]]) -> asyncio.Task[None]:
        """Run on_entry(key, value or None if deleted, revision) for current values, then every change."""
        watcher = await bucket.watch(key)

        async def pump() -> None:
            try:
                async for entry in watcher:
                    if entry is None:
                        continue
                    deleted = entry.operation in KV_DELETES
                    try:
                        await on_entry(entry.key, None if deleted else entry.value, int(entry.revision or 0))
                    except Exception:
                        log.exception("watch callback failed for %s", entry.key)
            finally:
                await watcher.stop()

        return asyncio.create_task(pump(), name=f"watch:{key}")

    async def watch_table(self, on_table: Callable[[PartitionTable], Awaitable[None]]) -> asyncio.Task[None]:
        """Run on_table(table) for the current table, then for every table written (a deleted one is skipped)."""

        async def on_entry(key: str, value: bytes | None, revision: int) -> None:
            if value is not None:
                await on_table(self.decode_table(value))

        return await self.watch(self.table, self.names.table_key, on_entry)

    def decode_table(self, value: bytes) -> PartitionTable:
        return PartitionTable.from_wire(codec.decode(value, KV_RECORD_BYTES_MAX))

    def decode_member(self, value: bytes) -> dict[str, Any]:
        info = codec.decode(value, KV_RECORD_BYTES_MAX)
        if not isinstance(info, dict):
            raise ConfigError("member record is not a map")
        return info
