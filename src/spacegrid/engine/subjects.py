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

    def log_subject(self, partition: int) -> str:
        return f"sg.{self.space}.log.{partition}"

    def pu_subject(self, member_id: str) -> str:
        """Where a smart client sends batches bound for one PU."""
        return f"sg.{self.space}.pu.{member_id}"

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
