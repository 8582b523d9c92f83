"""When a scaled grid has settled, and the request `spacegrid scale` leaves for the launcher."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from spacegrid.errors import ConfigError
from spacegrid.inspect import GridStatus
from spacegrid.partitioning import PartitionTable
from spacegrid.scaling import request_scale, settling, take_scale_request


def status(owners: tuple[str, ...], members: dict[str, dict[str, object]]) -> GridStatus:
    now = time.time()
    infos = {m: {"beat": now, "heartbeat_timeout_s": 5.0, "active": [p for p, o in enumerate(owners) if o == m],
                 **extra} for m, extra in members.items()}
    return GridStatus("s", PartitionTable(1, owners, (1,) * len(owners)), infos, read_at_s=now)


def test_settled_when_every_pu_owns_its_fair_share_and_serves_it() -> None:
    """3 PUs over 8 partitions own 2 or 3 each, all served, none leaving or catching up: done."""
    state = settling(status(("a", "b", "c", "a", "b", "c", "a", "b"), {"a": {}, "b": {}, "c": {}}), 3)
    assert state.done and state.moving == 0


def test_a_new_pu_without_its_share_is_still_to_move() -> None:
    """A PU that joined owns nothing yet: its fair share (8 // 3 = 2) is counted as still to move."""
    state = settling(status(("a", "b", "a", "b", "a", "b", "a", "b"), {"a": {}, "b": {}, "c": {}}), 3)
    assert not state.done and state.moving == 2 and "2 to move" in state.describe()


def test_a_leaving_pu_or_a_backup_catching_up_is_not_settled() -> None:
    """Partitions of a leaving PU are still to move; a backup still catching up keeps it unsettled."""
    leaving = settling(status(("a", "b", "a", "b"), {"a": {}, "b": {"leaving": True}}), 1)
    assert not leaving.done and leaving.moving == 2 and leaving.leaving == 1
    catching = settling(status(("a", "b", "a", "b"), {"a": {}, "b": {"backups_catching_up": 1}}), 2)
    assert not catching.done and catching.catching_up == 1


def test_a_request_is_taken_once_and_bounded(tmp_path: Path) -> None:
    """request_scale leaves it, take_scale_request consumes it; a count out of bounds is refused."""
    request_scale(tmp_path, 3)
    assert take_scale_request(tmp_path) == 3 and take_scale_request(tmp_path) is None
    with pytest.raises(ConfigError, match="1 to"):
        request_scale(tmp_path, 0)
