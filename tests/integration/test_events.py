"""The grid's events timeline (issue 12): PUs record joins, members declared dead, tables and failovers with how
long each partition took to serve again, in a bounded JetStream stream; `spacegrid events` reads them (a table or
JSON lines, by kind, since a time, following new ones), and they survive a restart of the grid."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spacegrid.launcher import LocalGrid
from spacegrid.testing.eventually import eventually_sync


def sg(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spacegrid.cli.main", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=60, check=False)


def events(data_dir: Path, *args: str) -> list[dict[str, Any]]:
    done = sg(data_dir, "events", "--json", *args)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_a_pu_kill_is_on_the_timeline_with_its_failovers(grid_factory: Callable[..., LocalGrid]) -> None:
    """Two PUs join (member_joined each, a table); one is SIGKILLed: the survivor records it dead (with how long
    it was silent) and each partition it took over (previous owner, how long it took); --kind, --since and --limit
    select; the table form prints one line per event."""
    grid = grid_factory(pus=2)
    members = grid.status().to_json()["members"]
    victim, survivor = members[0]["id"], members[1]["id"]
    victim_pu = next(pu for pu in grid.pus if pu.pid == members[0]["pid"])
    joined = {event["member"] for event in events(grid.data_dir, "--kind", "member_joined")}
    assert joined == {victim, survivor}
    assert events(grid.data_dir, "--kind", "table"), events(grid.data_dir)
    victim_pu.signal(signal.SIGKILL)

    def recorded() -> None:
        dead = events(grid.data_dir, "--kind", "member_dead")
        assert [event["dead"] for event in dead] == [victim], dead
        assert dead[0]["silent_s"] >= 0
        moved = events(grid.data_dir, "--kind", "partition_recovered")
        assert moved and all(e["member"] == survivor and e["previous"] == victim and e["took_s"] >= 0 for e in moved)

    eventually_sync(recorded, timeout_s=30, interval_s=0.5)
    assert len(events(grid.data_dir, "--limit", "1")) == 1
    assert events(grid.data_dir, "--since", "1h", "--kind", "member_dead")
    table = sg(grid.data_dir, "events", "--kind", "member_dead")
    assert table.returncode == 0 and "member_dead" in table.stdout and victim in table.stdout


def test_follow_prints_new_events_and_events_survive_a_restart(tmp_path: Path) -> None:
    """`events --follow --json` prints an event recorded after it started (a PU joining); after the whole grid is
    stopped and started again on its data dir, the earlier events are still there."""
    data_dir = tmp_path / "grid"
    grid = LocalGrid(data_dir, "spacegrid.examples.tickets:space")
    follower: subprocess.Popen[str] | None = None
    try:
        grid.start(1)
        grid.wait_ready(60, members=1)
        first = events(data_dir, "--kind", "member_joined")
        follower = subprocess.Popen([sys.executable, "-m", "spacegrid.cli.main", "events", "--follow", "--json",
                                     "--kind", "member_joined", "--limit", "2", "--data-dir", str(data_dir)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        grid.add_pu()
        out, err = follower.communicate(timeout=60)  # --limit 2: the one before, then the new PU's
        assert follower.returncode == 0, err
        seen = [json.loads(line)["member"] for line in out.splitlines()]
        assert len(seen) == 2 and seen[0] == first[0]["member"] and seen[1] != seen[0], seen
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
        grid.stop()
    again = LocalGrid(data_dir, "spacegrid.examples.tickets:space")
    try:
        again.start(1)
        again.wait_ready(60, members=1)
        members = [event["member"] for event in events(data_dir, "--kind", "member_joined")]
        assert members[:2] == seen and len(members) == 3, members
    finally:
        again.stop()
