"""Membership heartbeats and the partition table in JetStream KV; the table changes only by compare-and-set.

Each member writes only its own record (a PU credential may publish to its own key's subject and no other:
security.roles); the coordinator removes a dead member's record by deleting the exact message of the revision it saw
(`remove_member`), the one write to another member's record a PU may make. The members bucket is therefore made
here, not by nats-py's `create_key_value`, whose streams deny message deletes (a setting JetStream never lets an
update cancel)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api
from nats.js.errors import (
    APIError,
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
NO_SUITABLE_PEERS = 10005  # a replicated stream's placement refused: a new cluster's leader knows too few peers yet
MSG_DELETE_FAILED = 10057  # JetStream's answer to a refused message delete: no such message, or deletes denied
KV_DUPLICATE_WINDOW_S_MAX = 120.0  # nats-py's KV streams: two minutes, or the TTL if shorter
CONFIG_KEY = "config"  # the grid's configuration, next to the table's key in the table bucket
NOT_READY: tuple[type[Exception], ...] = (NatsTimeoutError, NoRespondersError, ServiceUnavailableError,
                                          NoStreamResponseError)  # JetStream electing leaders, or not up yet


def unplaced(exc: BaseException) -> bool:
    """Whether JetStream refused to place a replicated stream for want of peers: transient on a cluster that is
    forming (its meta leader was elected before it heard from every node), lasting if too few nodes run."""
    return isinstance(exc, APIError) and exc.err_code == NO_SUITABLE_PEERS


async def _bucket(js: JetStreamContext, name: str, replicas: int, ttl_s: float | None, create: bool) -> KeyValue:
    try:
        return await js.key_value(name)
    except (BucketNotFoundError, NotFoundError):
        if not create:
            raise GridUnavailable(f"KV bucket {name} does not exist: no PU of this space has started yet") from None
    return await js.create_key_value(bucket=name, history=1, replicas=replicas, ttl=ttl_s)


def members_stream_config(bucket: str, replicas: int, ttl_s: float | None) -> api.StreamConfig:
    """The members bucket's stream: what nats-py's `create_key_value(history=1)` makes, except that it allows
    message deletes (`remove_member`). Heartbeats need no more history than the last record."""
    return api.StreamConfig(
        name=f"KV_{bucket}", subjects=[f"$KV.{bucket}.>"], allow_rollup_hdrs=True, allow_msg_ttl=True,
        deny_delete=False, discard=api.DiscardPolicy.NEW,
        duplicate_window=min(ttl_s or KV_DUPLICATE_WINDOW_S_MAX, KV_DUPLICATE_WINDOW_S_MAX), max_age=ttl_s,
        max_consumers=-1, max_msgs=-1, max_msgs_per_subject=1, num_replicas=replicas,
    )


async def _members_bucket(js: JetStreamContext, name: str, replicas: int, ttl_s: float | None,
                          create: bool) -> KeyValue:
    """Open the members bucket, creating it if `create`; with `create` (a PU, `spacegrid up`), ConfigError if it
    is an older spacegrid's, which denies the message deletes that remove dead members."""
    stream = f"KV_{name}"
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        if not create:
            raise GridUnavailable(f"KV bucket {name} does not exist: no PU of this space has started yet") from None
        try:
            await js.add_stream(members_stream_config(name, replicas, ttl_s))
        except BadRequestError as exc:  # made meanwhile by another PU (with the same configuration, or checked below)
            if "already in use" not in str(exc):
                raise
        info = await js.stream_info(stream)
    if create and info.config.deny_delete:
        raise ConfigError(
            f"the members bucket {name} was made by an older spacegrid: its stream denies message deletes, by which "
            f"the coordinator now removes a dead member's record (a PU may write only its own). It holds only "
            f"heartbeats: stop every PU of this space, delete the stream {stream} with the admin credential (e.g. "
            f"`nats stream rm {stream}`), and start them again"
        )
    return await js.key_value(name)


class Coordination:
    """The space's two KV buckets: members (heartbeats) and table (the versioned partition table)."""

    def __init__(self, names: Names, members: KeyValue, table: KeyValue, js: JetStreamContext) -> None:
        self.names = names
        self.members = members
        self.table = table
        self.js = js

    @classmethod
    async def open(cls, js: JetStreamContext, names: Names, replicas: int = 1, create: bool = False,
                   member_ttl_s: float = 60.0) -> Coordination:
        members = await _members_bucket(js, names.members_bucket, replicas, member_ttl_s, create)
        table = await _bucket(js, names.table_bucket, replicas, None, create)
        return cls(names, members, table, js)

    # ---- membership ----------------------------------------------------------------------------------------

    async def register(self, member_id: str, info: dict[str, Any]) -> int | None:
        """Create the member's record (also over a deleted one); returns its revision, or None if a record of
        that member id is there (an earlier incarnation's, or another process using the same identity)."""
        try:
            return int(await self.members.create(member_id, codec.encode(info)))
        except KeyWrongLastSequenceError:
            return None

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

    async def leave(self, member_id: str, revision: int | None) -> bool:
        """This member's own record deleted on graceful leave (a KV delete: a delete marker, which every watch
        reports); with a revision, only if it is still the current one (False otherwise)."""
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

    async def remove_member(self, member_id: str, revision: int) -> bool:
        """The coordinator removes a dead member's record by deleting the message of the `revision` it saw
        (`$JS.API.STREAM.MSG.DELETE.KV_<members bucket>`). The bucket keeps one message per key, so if the member
        renewed (or registered again) since, that message is gone and the delete fails: False. Once deleted, the
        key holds no message, so the member's renewal (an update with last=revision) fails, which tells it that it
        was declared dead, and its `register` (a create) works. True also when the record was gone already (another
        coordinator removed it, it left, it expired). No delete marker is written, so watches do not report the
        removal: MembershipAgent forgets silent members whose record is gone."""
        assert revision > 0, "the coordinator removes only a revision it saw"
        try:
            # nats-py sends no `no_erase`: the server also overwrites the message's bytes (a small record, rarely)
            await self.js.delete_msg(f"KV_{self.names.members_bucket}", revision)
            return True
        except APIError as exc:
            if getattr(exc, "err_code", None) != MSG_DELETE_FAILED:
                raise
            refused = exc
        current = await self.member_revision(member_id)
        if current == revision:  # the message is there and the delete was refused: not a race, a misconfiguration
            raise ConfigError(f"JetStream refused to delete member {member_id}'s record ({refused.description}); "
                              f"the members bucket must allow message deletes")
        return current == 0

    async def member_revision(self, member_id: str) -> int:
        """The revision of the member's current record; 0 if it has none (never written, deleted, expired)."""
        try:
            entry = await self.members.get(member_id)
        except (KeyNotFoundError, NotFoundError):
            return 0
        return int(entry.revision or 0) if entry.value else 0

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

    async def newest_table(self) -> PartitionTable | None:
        """The table as the bucket's stream leader has it (never a replica that is behind, as a direct get may be),
        or None if none was written: what a claim's epoch is checked against."""
        bucket = self.names.table_bucket
        try:
            message = await self.js.get_last_msg(f"KV_{bucket}", f"$KV.{bucket}.{self.names.table_key}")
        except NotFoundError:
            return None
        except NOT_READY as exc:
            raise GridUnavailable(f"the partition table could not be read: JetStream did not answer ({exc!r})") from exc
        if not message.data:
            return None
        return self.decode_table(message.data)

    async def table_written(self) -> bool:
        """Whether a partition table was ever written: the grid then had a log (GridUnavailable if not answered)."""
        try:
            entry = await self.table.get(self.names.table_key)
        except (KeyNotFoundError, NotFoundError):
            return False
        except NOT_READY as exc:
            raise GridUnavailable(f"the partition table could not be read: JetStream did not answer ({exc!r})") from exc
        return bool(entry.value)

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
