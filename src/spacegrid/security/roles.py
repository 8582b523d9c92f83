"""The grid's roles and the NATS subject permissions each one gets (least privilege, ADR 0010).

- admin: everything (`scale`, `reconcile`, chaos, stream management, `init`).
- pu: one PU incarnation, whose identity is its credential: serves its own request subject and the partition
  subjects, appends to its own log subject and to the claims, writes its own member record and no other (the
  coordinator removes a dead member's record by deleting the message of the revision it saw, through
  `$JS.API.STREAM.MSG.DELETE.KV_<members bucket>`, the one write to another member's record it may make), writes the
  partition table (the coordinator writes it), trims the log (`STREAM.PURGE` of the log stream: the coordinator),
  creates and reads the space's three streams (the JetStream API as an explicit list: no other stream, no update,
  no deletion); creates the events stream and publishes events to it; replies to any inbox.
- client: sends requests to PUs and partitions, reads the partition table and members, reads the log (change
  feeds: the same data its requests can read), receives replies only in its own inbox; never publishes to a log
  subject or writes a bucket.
- reader: what `status`, `events` and dashboards need: the buckets, the log stream's info, the events stream; no
  requests to PUs.

Every identity's inbox is `_INBOX.<its public key>` (`inbox_prefix`), so one credential never sees another's replies.
"""

from __future__ import annotations

import re

from spacegrid.engine.subjects import Names
from spacegrid.security.jwt import Permissions

ROLES = ("admin", "pu", "client", "reader")
_JS = "$JS.API"
MEMBER_ID = re.compile(r"[-_=/a-zA-Z0-9]+")  # one subject token that is also a KV key: no dots, no wildcards


def inbox_prefix(user_public_key: str) -> str:
    """Where an identity's replies arrive: its subscribe permission covers exactly this prefix."""
    return f"_INBOX.{user_public_key}"


def _read_stream(stream: str) -> tuple[str, ...]:
    """Reading one stream: its info, single messages (direct or through the leader), ephemeral push consumers
    (ordered: created, replaced, deleted) and their flow control."""
    return (f"{_JS}.STREAM.INFO.{stream}", f"{_JS}.STREAM.MSG.GET.{stream}", f"{_JS}.DIRECT.GET.{stream}",
            f"{_JS}.DIRECT.GET.{stream}.>", f"{_JS}.CONSUMER.CREATE.{stream}", f"{_JS}.CONSUMER.CREATE.{stream}.>",
            f"{_JS}.CONSUMER.DELETE.{stream}.>", f"{_JS}.CONSUMER.INFO.{stream}.>", f"$JS.FC.{stream}.>")


def _read_buckets(names: Names) -> tuple[str, ...]:
    """Reading the members and table buckets: open them, get keys, watch them (ordered push consumers)."""
    return (f"{_JS}.INFO", *_read_stream(f"KV_{names.members_bucket}"), *_read_stream(f"KV_{names.table_bucket}"))


def admin() -> Permissions:
    return Permissions(publish=(">",), subscribe=(">",))


def pu(names: Names, member_id: str, user_public_key: str) -> Permissions:
    """A PU publishes to its own member key only (a KV put, create, update or delete of a key are all a publish to
    its subject); the coordinator's removal of another member's record is a message delete, the only JetStream API
    call on the members bucket's stream that writes. The JetStream API is an explicit list over the space's three
    streams (the log and the two buckets): creating them where missing, reading them, trimming the log; no other
    stream can be created (a stream's republish is sent by the server past these permissions), and none updated,
    purged otherwise or deleted."""
    if not MEMBER_ID.fullmatch(member_id):
        raise ValueError(f"member id {member_id!r} is not one subject token of letters, digits, '-', '_', '=', '/'")
    members_stream, table_stream = f"KV_{names.members_bucket}", f"KV_{names.table_bucket}"
    streams = (names.stream, members_stream, table_stream)
    jetstream = [f"{_JS}.INFO", f"{_JS}.STREAM.PURGE.{names.stream}", f"{_JS}.STREAM.MSG.DELETE.{members_stream}"]
    for stream in streams:
        jetstream += [f"{_JS}.STREAM.CREATE.{stream}", *_read_stream(stream), f"$JS.ACK.{stream}.>"]
    jetstream += [f"{_JS}.STREAM.CREATE.{names.events_stream}", f"{_JS}.STREAM.INFO.{names.events_stream}"]
    return Permissions(
        publish=(names.pu_log_subject(member_id), names.claim_wildcard, f"$KV.{names.members_bucket}.{member_id}",
                 f"$KV.{names.table_bucket}.>", *jetstream, names.events_wildcard, names.pu_wildcard, "_INBOX.>"),
        subscribe=(names.pu_subject(member_id), names.partition_wildcard, names.dead_log_subject,
                   f"{inbox_prefix(user_public_key)}.>"),
    )


def client(names: Names, user_public_key: str) -> Permissions:
    return Permissions(publish=(names.pu_wildcard, names.partition_wildcard, *_read_buckets(names),
                                *_read_stream(names.stream)),
                       subscribe=(f"{inbox_prefix(user_public_key)}.>",))


def reader(names: Names, user_public_key: str) -> Permissions:
    return Permissions(publish=(*_read_buckets(names), f"{_JS}.STREAM.INFO.{names.stream}",
                                *_read_stream(names.events_stream)),
                       subscribe=(f"{inbox_prefix(user_public_key)}.>",))


def permissions(role: str, space: str, user_public_key: str, member_id: str | None = None) -> Permissions:
    """The permissions of `role` in `space` for the identity `user_public_key` (a PU's also name its member)."""
    names = Names(space)
    if role == "admin":
        return admin()
    if role == "pu":
        if not member_id:
            raise ValueError("a PU credential names its member id")
        return pu(names, member_id, user_public_key)
    if role == "client":
        return client(names, user_public_key)
    if role == "reader":
        return reader(names, user_public_key)
    raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
