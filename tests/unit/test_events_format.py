"""Events as they are stored and shown: JSON bounded in size, known kinds only; `--since` durations."""

from __future__ import annotations

import json
import time

import click
import pytest

from spacegrid.cli.events import describe, parse_since
from spacegrid.engine.events import NO_EVENTS, encode_event
from spacegrid.limits import EVENT_BYTES_MAX


def test_an_event_is_json_with_its_time_kind_member_and_details() -> None:
    """encode_event gives one JSON object; describe shows the details as name=value in order."""
    event = json.loads(encode_event("member_dead", "pu-a", 1700000000.1234, {"dead": "pu-b", "silent_s": 0.6}))
    assert event == {"at": 1700000000.123, "kind": "member_dead", "member": "pu-a", "dead": "pu-b", "silent_s": 0.6}
    assert describe(event) == 'dead="pu-b" silent_s=0.6'


def test_an_oversized_event_keeps_its_head_and_says_it_was_cut() -> None:
    """Details past EVENT_BYTES_MAX are dropped, never the event."""
    data = encode_event("table", "pu-a", 1.0, {"moves": "x" * (2 * EVENT_BYTES_MAX)})
    assert len(data) <= EVENT_BYTES_MAX and json.loads(data)["truncated"] is True


def test_unknown_kinds_are_a_programming_error() -> None:
    """Kinds are a closed list (the console and the docs name them)."""
    with pytest.raises(AssertionError):
        NO_EVENTS.emit("something_else")


def test_since_takes_durations_and_says_what_it_wants() -> None:
    """30s, 10m, 2h, 1d ago as a Unix time; anything else is refused with examples."""
    assert abs(parse_since("10m") - (time.time() - 600)) < 5  # type: ignore[operator]
    assert parse_since(None) is None
    with pytest.raises(click.BadParameter, match="30s, 10m"):
        parse_since("yesterday")
