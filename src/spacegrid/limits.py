"""Every bound spacegrid enforces, in one place; each is overridable through settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

KIB: Final = 1024
MIB: Final = 1024 * KIB


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on messages, batches, time and memory. Units are in the names."""

    request_payload_bytes_max: int = 1 * MIB
    write_bytes_max: int = 256 * KIB  # one operation's writes, encoded: a put's value or all of a handler's writes
    requests_per_message_max: int = 4096
    append_records_max: int = 512
    append_bytes_max: int = 512 * KIB
    append_timeout_s: float = 5.0
    appends_in_flight_max: int = 2  # a PU's log messages in flight at once (each holds many partitions' writes)
    append_busy_retry_s: float = 0.002  # a replicated stream refused an append (another on the fence in process)
    log_unavailable_retry_s: float = 0.25  # no stream took an append: append again after this; while the stream is
    # missing (deleted), look for it again this often
    log_check_interval_s: float = 2.0  # a PU looks whether the log stream is there this often, writes or not
    claim_attempts_max: int = 20  # a new owner's compare-and-set claim of a partition, retried while others land
    handler_time_limit_s: float = 1.0
    call_deadline_s: float = 10.0
    attempt_timeout_s: float = 2.0
    retry_backoff_s_min: float = 0.005
    retry_backoff_s_max: float = 0.1
    heartbeat_interval_s: float = 0.2
    lease_s: float = 0.6  # reads are served only within this of the last renewed heartbeat's sending
    heartbeat_timeout_s: float = 1.5
    dedup_window_ops: int = 8192
    replay_timeout_s: float = 60.0  # one partition's replay of the log, from when it starts reading
    replays_at_once_max: int = 4  # a PU's partition replays reading the log at once (each its own consumer); more wait
    recovery_retry_s_min: float = 0.25  # a partition whose recovery failed is tried again after this, doubling...
    recovery_retry_s_max: float = 1.0  # ...up to this (one claim per attempt: at most one a second, no storm)
    poisoned_retry_s: float = 60.0  # a partition stopped by a log message it can't apply: tried again this rarely
    jetstream_api_timeout_s: float = 2.0  # one JetStream API call (stream info, last message, consumer create)
    handoff_timeout_s: float = 30.0  # a leaving PU waits this long at most for its partitions to move
    pending_requests_max: int = 100_000  # a client's requests in flight
    client_batches_per_pu_eager: int = 2  # a client's messages to one PU not fully answered below which it sends at once
    client_batch_requests_min: int = 16  # ...past that, a message goes only once this many requests have gathered...
    client_batches_per_pu_max: int = 6  # ...up to this many unanswered; more requests wait for one
    waiters_max: int = 100_000  # a PU's requests waiting for a commit, the store or a read-through: past it, Overloaded
    replies_pending_max: int = 100_000  # a PU's replies queued and not yet handed to the connection: past it, Overloaded
    partition_backlog_ops_max: int = 50_000  # a partition's writes applied and not yet appended: past it, Overloaded
    bootstrap_timeout_s: float = 60.0  # a starting PU waits this long at most for JetStream and for its store
    bootstrap_retry_s: float = 0.25  # between attempts while it waits
    first_table_settle_s: float = 0.3  # a new grid's first table waits until no member joined for this long
    jetstream_probe_timeout_s: float = 0.25  # one "does JetStream answer yet?" request while a PU or up waits for it
    catch_ups_max: int = 1  # backups of one PU catching up with the log at once (paces live migration; measured)
    write_behind_delay_s: float = 0.1  # the pump persists each partition's new writes at most this long after
    write_behind_batch_rows: int = 500  # rows per store transaction
    store_retry_backoff_s_max: float = 5.0  # backoff between attempts while the store is unavailable
    store_load_batch_rows: int = 2000  # rows per read when a partition is loaded from the store
    store_flush_on_stop_s: float = 30.0  # a stopping PU tries this long to persist what the store lacks
    log_trim_interval_s: float = 1.0  # the log is trimmed behind the store at most this often
    log_trim_age_s: float = 30.0  # ...and only up to what was persisted this long ago (> a client's call deadline)
    backup_prune_interval_s: float = 1.0  # backups read the store's position this often
    eviction_interval_s: float = 0.25  # how often entries are expired and bounded maps evicted down to size
    eviction_scan_max: int = 10_000  # entries looked at per map and partition in one eviction round
    versions_page_max: int = 10_000  # (key, version) pairs in one reconciliation reply
    store_pool_size: int = 4  # PostgreSQL connections per PU (= store transactions at once)
    store_statement_timeout_s: float = 10.0  # one store statement, lock waits included; connect; SQLite busy wait
    connect_timeout_s: float = 5.0  # a first connection to NATS gives up after this (GridUnavailable: down or unreachable)
    pu_nats_lost_exit_s: float = 30.0  # a PU that can't reach NATS this long exits non-zero
    pu_stop_timeout_s: float = 30.0  # a PU exits this long after SIGTERM at most: hand-off, store flush and all

    @property
    def probe_silent_s(self) -> float:
        """A member is probed (does anyone listen on its subject?) once silent this long: the answer counts only once
        its silence passes the lease, so a heartbeat interval before that is soon enough, and a live member, heard
        every interval, is never probed."""
        return self.lease_s - self.heartbeat_interval_s

    def __post_init__(self) -> None:
        assert self.write_bytes_max < self.append_bytes_max <= self.request_payload_bytes_max
        assert self.heartbeat_interval_s < self.lease_s <= self.heartbeat_timeout_s
        assert self.attempt_timeout_s <= self.call_deadline_s
        assert 0 < self.append_busy_retry_s < self.append_timeout_s
        assert 0 < self.log_unavailable_retry_s < self.append_timeout_s
        assert self.catch_ups_max >= 1 and self.replays_at_once_max >= 1 and self.append_records_max >= 1 \
            and self.dedup_window_ops >= 1 and self.appends_in_flight_max >= 1 \
            and self.claim_attempts_max >= 1 and 1 <= self.client_batches_per_pu_eager <= self.client_batches_per_pu_max \
            and self.client_batch_requests_min >= 1


DEFAULT_LIMITS: Final = Limits()

# Process-level bounds (the launcher, the PU process, NATS connections): not per-space settings.
GRID_STOP_TIMEOUT_S: Final = 15.0  # `spacegrid up` stops within this (PU hand-off, store drain, nats-server), then kills
GRID_STOP_TIMEOUT_S_MIN: Final = 3.0
GRID_STOP_NATS_RESERVE_S_MAX: Final = 3.0  # of the stop bound, kept for stopping nats-server after the PUs
PU_STOP_MARGIN_S: Final = 1.0  # a PU started by the launcher is told to finish this long before the launcher kills it
PU_STOP_HANDOFF_SHARE: Final = 0.5  # of a PU's stop bound, at most this share waits for the hand-off (the rest: store
# flush, replies, closing)
PU_STOP_KILL_GRACE_S: Final = 2.0  # a PU's own watchdog exits it this long after its stop bound, stuck or not
PU_NATS_CHECK_INTERVAL_S: Final = 0.25  # how often a PU looks at its NATS connection (lost for how long?)
NATS_RECONNECT_WAIT_S_MIN: Final = 0.25  # reconnect attempts back off from this...
NATS_RECONNECT_WAIT_S_MAX: Final = 2.0  # ...doubling up to this, with jitter
NATS_RECONNECT_JITTER: Final = 0.2  # +-20% of the wait
NATS_LOST_LOG_INTERVAL_S: Final = 30.0  # while NATS stays unreachable, one log line this often (and on the loss)
DATA_DIR_LOCK_READ_S: Final = 0.5  # how long a refused locker waits for the holder to write its PID into the lock file
MEMBER_TTL_S_MIN: Final = 60.0  # the members bucket's TTL: at least this...
MEMBER_TAKEOVER_TIMEOUTS: Final = 4  # a restarted PU waits this many heartbeat timeouts at most for its member id's
# earlier record to go unrenewed (then removes it); a record renewed all along: another live PU with that id
MEMBER_TTL_HEARTBEAT_TIMEOUTS: Final = 10  # ...and at least this many heartbeat timeouts (ProcessingUnit._bootstrap)

# Wire, engine and definition bounds (the same for every space).
PARTITIONS_MAX: Final = 4096  # partitions of one space
KEY_CHARS_MAX: Final = 1024  # characters of one key
KV_RECORD_BYTES_MAX: Final = 4 * MIB  # a member record, the partition table or the grid's configuration, decoded
NATS_PENDING_BYTES_MAX: Final = 64 * MIB  # what one connection buffers while NATS is unreachable
LOG_DUPLICATE_WINDOW_S: Final = 120.0  # JetStream's Msg-Id deduplication window of the log stream
REPLAY_PENDING_MSGS_MAX: Final = 65536  # a replay or backup consumer's undelivered messages held client-side...
REPLAY_PENDING_BYTES_MAX: Final = 256 * MIB  # ...and bytes
FEED_QUEUE_MSGS_MAX: Final = 256  # log messages a change feed holds read and not yet turned into changes (then the
# consumer waits: nats-py holds up to REPLAY_PENDING_* more, past which the ordered consumer reads again from the gap)
FEED_SNAPSHOT_PAGE_ENTRIES_MAX: Final = 2000  # entries in one page of a continuous query's snapshot of a partition
FEED_SNAPSHOT_PAGE_BYTES_MAX: Final = 4 * MIB  # ...and their encoded bytes, at most (one reply message)
CLAIM_BYTES_MAX: Final = 1 * KIB  # one ownership claim (epoch, member id), encoded
REPLY_MESSAGE_BYTES_MAX: Final = 8 * MIB  # one batched reply message a client accepts (the embedded max_payload)
EVENTS_KEPT_MAX: Final = 100_000  # the events stream keeps at most this many events...
EVENTS_KEPT_S: Final = 7 * 24 * 3600.0  # ...for at most this long (the older go first)
EVENT_BYTES_MAX: Final = 8 * KIB  # one event, encoded (longer details are cut)
EVENTS_PENDING_MAX: Final = 1024  # events a PU queued and not yet published: past it, new ones are dropped (counted)

# ---- The wire's decode bounds (issue 11, item 5) ---------------------------------------------------------------
# Every field of a request message a PU decodes is bounded: the message's bytes (Limits.request_payload_bytes_max),
# its requests (Limits.requests_per_message_max), a key's characters (KEY_CHARS_MAX) and the bounds below.
# codec.decode enforces the WIRE_*_MAX of one str, bin, array, map and extension value on every document it decodes
# (they are its defaults), and names the bound a document broke. They are wide enough for every document spacegrid
# writes itself (a reply of up to REPLY_MESSAGE_BYTES_MAX holding a query's result, a log message, a KV record), so
# on a request message of the default 1 MiB they bind only on a header that declares more than the message holds;
# they hold as they are when a space raises its request_payload_bytes_max.
WIRE_STR_BYTES_MAX: Final = 1 * MIB  # one str, UTF-8 bytes
WIRE_BIN_BYTES_MAX: Final = 1 * MIB  # one bin
WIRE_ARRAY_ITEMS_MAX: Final = 1024 * 1024  # one array's items
WIRE_MAP_ITEMS_MAX: Final = 1024 * 1024  # one map's entries
WIRE_EXT_BYTES_MAX: Final = 12  # one extension value: msgpack's timestamp (4, 8 or 12 bytes) is the only one accepted
# (by codec.decode; a space's own codec, Space.values, accepts the types registered on it, within the two below)
WIRE_TYPED_EXT_BYTES_MAX: Final = 1 * MIB  # one typed value's extension payload (Space(types=...)), as one str
WIRE_TYPED_NESTING_MAX: Final = 8  # typed values nested in typed values (a dataclass holding a datetime: 2); each
# one's payload nests arrays and maps at most WIRE_VALUE_DEPTH_MAX deep, on encode and decode alike
MSGPACK_DEPTH_MAX: Final = 1024  # arrays and maps nested in any document: msgpack's own bound, not a setting (measured
# on msgpack 1.1: its C unpacker keeps a fixed stack of 1024 containers and raises StackError, with no message and no
# recursion, at the 1025th; 100,000 levels cost nothing more). codec.decode walks a document only for a lower bound.
WIRE_VALUE_DEPTH_MAX: Final = 64  # arrays and maps nested in a request's value or arguments (a flat list is 1): a
# value 1000 deep would decode but break Python's recursion (repr, a handler), and the log nests a value 5 deeper
WIRE_NAME_CHARS_MAX: Final = 64  # a request's map, handler or query name: as long as a definition allows (space._NAME)
WIRE_OP_ID_CHARS_MAX: Final = 128  # a request's operation id (the client's are ~20), each kept in the dedup window

# ---- The HTTP gateway (spacegrid.gateway) ----------------------------------------------------------------------
GATEWAY_BODY_BYTES_MAX: Final = 1 * MIB  # one request's body (a value or handler arguments): past it, 413
GATEWAY_REQUESTS_IN_FLIGHT_MAX: Final = 4096  # requests the gateway serves at once: past it, 429 Overloaded
GATEWAY_CHANGE_STREAMS_MAX: Final = 256  # change feeds (server-sent events) open at once: past it, 429 Overloaded
GATEWAY_IDEMPOTENCY_KEY_CHARS_MAX: Final = 100  # an Idempotency-Key header (the op id adds the token's id)
GATEWAY_SSE_KEEPALIVE_S: Final = 15.0  # an idle change feed sends a comment this often: proxies keep it open
GATEWAY_START_S: Final = 10.0  # the gateway binds within this, or the command fails
GATEWAY_STOP_S: Final = 1.0  # open event streams get this long to close on shutdown
GATEWAY_TOKEN_TTL_S_MAX: Final = 10 * 365 * 24 * 3600.0  # a bearer token's lifetime at most (0: no expiry)
