"""The --fsync setting: parsing, what nats-server is told, what is recorded."""

from __future__ import annotations

import pytest

from spacegrid.config import durability_of
from spacegrid.durability import DEFAULT_FSYNC, Fsync
from spacegrid.errors import ConfigError


def test_fsync_modes_parse_to_the_nats_server_setting() -> None:
    """'always' fsyncs before each acknowledgement; 'interval' defaults to 1 s; 'interval:D' takes nats durations."""
    assert Fsync.parse("always").sync_interval == "always" and Fsync.parse("always").fsync_before_ack
    assert Fsync.parse("interval") == Fsync("interval", "1s")
    assert Fsync.parse("interval:500ms").sync_interval == "500ms"
    assert not Fsync.parse("interval:2m").fsync_before_ack
    assert DEFAULT_FSYNC.label == "always"


@pytest.mark.parametrize("text", ["", "sometimes", "always:1s", "interval:1", "interval:fast", "interval:-1s"])
def test_a_bad_fsync_setting_says_what_is_accepted(text: str) -> None:
    """Anything else is refused with an error listing the accepted forms."""
    with pytest.raises(ConfigError, match="'always', 'interval' or 'interval:DURATION'"):
        Fsync.parse(text)


def test_the_recorded_durability_names_the_behaviour_not_the_server_knob() -> None:
    """The grid's configuration records fsync=always or fsync=interval:D; no sync_interval means JetStream's 2 min."""
    assert durability_of("always") == "fsync=always"
    assert durability_of("1s") == "fsync=interval:1s"
    assert durability_of(None) == "fsync=interval:2m"
