"""The grid's roles and the NATS subject permissions each one gets (least privilege, ADR 0010).

- admin: everything (`scale`, `reconcile`, chaos, stream management, `init`).
- pu: one PU incarnation: serves its own request subject and the partition subjects, appends to its own log subject
  and to the claims, writes the membership and the partition table (the coordinator removes dead members), uses
  the JetStream API but may not delete a stream; replies to any inbox.
- client: sends requests to PUs and partitions, reads the partition table and members, receives replies only in
  its own inbox; never publishes to a log subject, writes a bucket, or reads the log.
- reader: what `status` and dashboards need: the buckets, stream and account info; no requests to PUs.

Every identity's inbox is `_INBOX.<its public key>` (`inbox_prefix`), so one credential never sees another's replies.
"""

from __future__ import annotations

from spacegrid.engine.subjects import Names
from spacegrid.security.jwt import Permissions

ROLES = ("admin", "pu", "client", "reader")
_JS = "$JS.API"


def inbox_prefix(user_public_key: str) -> str:
    """Where an identity's replies arrive: its subscribe permission covers exactly this prefix."""
    return f"_INBOX.{user_public_key}"


def _read_buckets(names: Names) -> tuple[str, ...]:
    """Reading the members and table buckets: open them, get keys, watch them (ordered push consumers)."""
    subjects = [f"{_JS}.INFO"]
    for bucket in (f"KV_{names.members_bucket}", f"KV_{names.table_bucket}"):
        subjects += [f"{_JS}.STREAM.INFO.{bucket}", f"{_JS}.STREAM.MSG.GET.{bucket}", f"{_JS}.DIRECT.GET.{bucket}",
                     f"{_JS}.DIRECT.GET.{bucket}.>", f"{_JS}.CONSUMER.CREATE.{bucket}",
                     f"{_JS}.CONSUMER.CREATE.{bucket}.>", f"{_JS}.CONSUMER.DELETE.{bucket}.>",
                     f"{_JS}.CONSUMER.INFO.{bucket}.>",
                     f"$JS.FC.{bucket}.>"]
    return tuple(subjects)


def admin() -> Permissions:
    return Permissions(publish=(">",), subscribe=(">",))


def pu(names: Names, member_id: str, user_public_key: str) -> Permissions:
    return Permissions(
        publish=(names.pu_log_subject(member_id), names.claim_wildcard, f"$KV.{names.members_bucket}.>",
                 f"$KV.{names.table_bucket}.>", f"{_JS}.>", "$JS.FC.>", "$JS.ACK.>", names.pu_wildcard,
                 "_INBOX.>"),
        publish_deny=(f"{_JS}.STREAM.DELETE.>", f"{_JS}.ACCOUNT.>", f"{_JS}.META.>", f"{_JS}.SERVER.>"),
        subscribe=(names.pu_subject(member_id), names.partition_wildcard, names.dead_log_subject,
                   f"{inbox_prefix(user_public_key)}.>"),
    )


def client(names: Names, user_public_key: str) -> Permissions:
    return Permissions(publish=(names.pu_wildcard, names.partition_wildcard, *_read_buckets(names)),
                       subscribe=(f"{inbox_prefix(user_public_key)}.>",))


def reader(names: Names, user_public_key: str) -> Permissions:
    return Permissions(publish=(*_read_buckets(names), f"{_JS}.STREAM.INFO.{names.stream}"),
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
