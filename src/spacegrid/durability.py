"""The durability a grid runs with: when the log's server fsyncs an append relative to acknowledging it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from spacegrid.errors import ConfigError

ALWAYS: Final = "always"
INTERVAL: Final = "interval"
INTERVAL_DEFAULT: Final = "1s"  # `--fsync interval` alone
SERVER_DEFAULT_INTERVAL: Final = "2m"  # JetStream's own sync_interval when none is configured
_DURATION_RE: Final = re.compile(r"^\d+(ns|us|ms|s|m|h)$")


@dataclass(frozen=True, slots=True)
class Fsync:
    """`always`: nats-server fsyncs an append before acknowledging it (nothing acknowledged is lost to a power cut).
    `interval:D`: it acknowledges from memory and fsyncs every D (a power cut or OS crash of a node can lose the
    last D of acknowledged writes unless other replicas hold them)."""

    mode: str
    interval: str = ""  # a nats-server duration ("1s", "500ms", "2m") for `interval`

    def __post_init__(self) -> None:
        if self.mode == ALWAYS and not self.interval:
            return
        if self.mode != INTERVAL or not _DURATION_RE.match(self.interval):
            raise ConfigError(f"--fsync takes 'always', 'interval' or 'interval:DURATION' (e.g. interval:1s, "
                              f"interval:500ms), not {self.label!r}")

    @classmethod
    def parse(cls, text: str) -> Fsync:
        mode, _, interval = text.strip().partition(":")
        if mode == INTERVAL and not interval:
            interval = INTERVAL_DEFAULT
        return cls(mode, interval)

    @classmethod
    def from_sync_interval(cls, sync_interval: str | None) -> Fsync:
        """What a nats-server with this `sync_interval` setting does (None: JetStream's default, 2 min)."""
        if sync_interval is None:
            return cls(INTERVAL, SERVER_DEFAULT_INTERVAL)
        return cls(ALWAYS) if sync_interval == ALWAYS else cls(INTERVAL, sync_interval)

    @property
    def sync_interval(self) -> str:
        """The `sync_interval` line of nats-server's `jetstream { }` block that gives this behaviour."""
        return ALWAYS if self.mode == ALWAYS else self.interval

    @property
    def label(self) -> str:
        return self.mode if not self.interval else f"{self.mode}:{self.interval}"

    @property
    def fsync_before_ack(self) -> bool:
        return self.mode == ALWAYS


DEFAULT_FSYNC: Final = Fsync(ALWAYS)  # ADR 0007: `spacegrid up` fsyncs before acknowledging unless told otherwise
