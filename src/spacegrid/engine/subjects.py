"""Names of every NATS subject, stream and bucket a space uses, in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Names:
    space: str

    @property
    def stream(self) -> str:
        return f"SG_{self.space}"

    @property
    def log_wildcard(self) -> str:
        return f"sg.{self.space}.log.>"

    def pu_log_subject(self, member_id: str) -> str:
        """Where one PU incarnation appends its partitions' writes, one message per tick (ADR 0009)."""
        return f"sg.{self.space}.log.pu.{member_id}"

    @property
    def pu_log_wildcard(self) -> str:
        """Every PU's writes: what a partition's recovery and a backup read, keeping their partitions' records."""
        return f"sg.{self.space}.log.pu.>"

    def claim_subject(self, partition: int) -> str:
        """A partition's ownership claims: each new owner appends one before it replays and serves (ADR 0009)."""
        return f"sg.{self.space}.log.claim.{partition}"

    @property
    def claim_wildcard(self) -> str:
        """Every partition's claims: every append is fenced on this filter's last sequence."""
        return f"sg.{self.space}.log.claim.*"

    @property
    def log_reset_subject(self) -> str:
        """The first message of a recreated log (`spacegrid repair --recreate-log`): on the claims' filter, so the
        PUs' appends, fenced on the last claim they saw, are refused until they have seen it."""
        return f"sg.{self.space}.log.claim.reset"

    @property
    def dead_log_subject(self) -> str:
        """Log messages an operator quarantined (`spacegrid repair`): kept, with who, when and why, never replayed."""
        return f"sg.{self.space}.log.dead"

    @property
    def events_stream(self) -> str:
        """The grid's events (joins, failovers, moves, fences, store outages...): a bounded stream of their own."""
        return f"SG_{self.space}_events"

    def event_subject(self, kind: str) -> str:
        return f"sg.{self.space}.events.{kind}"

    @property
    def events_wildcard(self) -> str:
        return f"sg.{self.space}.events.>"

    def pu_subject(self, member_id: str) -> str:
        """Where a smart client sends batches bound for one PU."""
        return f"sg.{self.space}.pu.{member_id}"

    @property
    def pu_wildcard(self) -> str:
        """Every PU's request subject: where clients may send (security.roles)."""
        return f"sg.{self.space}.pu.*"

    @property
    def partition_wildcard(self) -> str:
        return f"sg.{self.space}.p.*"

    def partition_subject(self, partition: int) -> str:
        """Where a thin client sends requests for one partition; only its owner subscribes."""
        return f"sg.{self.space}.p.{partition}"

    @property
    def members_bucket(self) -> str:
        return f"sg_{self.space}_members"

    @property
    def table_bucket(self) -> str:
        return f"sg_{self.space}_table"

    table_key = "table"
