"""Scaling a grid that `spacegrid up` runs: the request `spacegrid scale` (or `spacegrid roll`) leaves in the data
dir, for the launcher to apply (new PUs started; PUs stopped one at a time, each handing its partitions off first;
every PU replaced, one at a time, a new one settled before an old one stops), and when a scaled grid has settled."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from spacegrid.errors import ConfigError
from spacegrid.inspect import GridStatus

log = logging.getLogger("spacegrid.scaling")

SCALE_REQUEST_FILE = "scale.json"
SCALE_PUS_MAX = 64  # PUs one local launcher runs


def check_pus(pus: int) -> int:
    if not 1 <= pus <= SCALE_PUS_MAX:
        raise ConfigError(f"a grid runs 1 to {SCALE_PUS_MAX} PUs here, not {pus}")
    return pus


ROLL = "roll"  # the request to replace every PU, one at a time


def request_scale(data_dir: Path, pus: int | str) -> None:
    """Leave the request for the launcher: a PU count, or ROLL (written whole: it never reads half of one)."""
    wanted = pus if pus == ROLL else check_pus(int(pus))
    path = data_dir / SCALE_REQUEST_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"pus": wanted}))
    os.replace(temporary, path)


def take_scale_request(data_dir: Path) -> int | str | None:
    """The PU count (or ROLL) asked for since the last call (consumed), or None; a bad request is logged and
    dropped."""
    path = data_dir / SCALE_REQUEST_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    path.unlink(missing_ok=True)
    try:
        wanted = json.loads(text)["pus"]
        return ROLL if wanted == ROLL else check_pus(int(wanted))
    except (ValueError, KeyError, TypeError, ConfigError) as exc:
        log.warning("ignored a scale request %r: %s", text[:80], exc)
        return None


@dataclass(frozen=True)
class Settling:
    """How far a grid scaled to `pus` has settled: done once it runs that many live PUs, none leaving, every
    partition served by a live owner, each PU owning its fair share (the floor or the ceiling of partitions / PUs),
    and no backup catching up."""

    pus: int
    live: int
    leaving: int
    served: int
    partitions: int
    moving: int  # partitions still to move: owned by a PU gone or leaving, or missing from a PU under its share
    catching_up: int

    @property
    def done(self) -> bool:
        return (self.live == self.pus and not self.leaving and self.served == self.partitions and self.moving == 0
                and self.catching_up == 0)

    def describe(self) -> str:
        return (f"{self.live}/{self.pus} PUs, {self.served}/{self.partitions} partitions served, {self.moving} to "
                f"move, {self.catching_up} backups catching up" + (f", {self.leaving} leaving" if self.leaving else ""))


def settling(status: GridStatus, pus: int) -> Settling:
    live = [m for m in status.members if status.alive(m)]
    leaving = [m for m in live if status.members[m].get("leaving")]
    moving = sum(1 for owner in status.table.owners if owner not in live or owner in leaving)
    owned = Counter(status.table.owners)
    fair_min = status.table.partition_count // max(len(live), 1)
    moving += sum(max(0, fair_min - owned[m]) for m in live if m not in leaving)
    catching_up = sum(int(status.members[m].get("backups_catching_up", 0)) for m in live)
    return Settling(pus, len(live), len(leaving), status.active_partitions, status.table.partition_count, moving,
                    catching_up)
