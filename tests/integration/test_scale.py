"""`spacegrid scale N` and `spacegrid roll` on a grid `spacegrid up` runs (issue 12, items 3 and 4): PUs started take
their fair share by live migration, PUs stopped hand their partitions off first, a roll replaces every PU one at a
time; under a write load recorded as a history, no acknowledged write is lost and the counters are exact."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from spacegrid import Client
from spacegrid.launcher import load_space
from spacegrid.security.access import Access
from spacegrid.testing.apps import APP
from spacegrid.testing.eventually import eventually_sync
from tests.integration.workload import History, check_history, write_load

SPACEGRID = [sys.executable, "-m", "spacegrid.cli.main"]


def sg(data_dir: Path, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SPACEGRID, *args, "--data-dir", str(data_dir)], capture_output=True, text=True,
                          timeout=timeout_s, check=False)


def status(data_dir: Path) -> dict[str, object]:
    done = sg(data_dir, "status", "--json")
    assert done.returncode == 0, done.stderr
    found: dict[str, object] = json.loads(done.stdout)
    return found


def live_members(data_dir: Path) -> int:
    found = status(data_dir)
    assert found["ready"] is True
    return sum(1 for member in found["members"] if member["alive"])  # type: ignore[attr-defined]


@contextmanager
def running_grid(data_dir: Path, *up_args: str, pus: int) -> Iterator[None]:
    """`spacegrid up` with the test app, ready with `pus` PUs; SIGTERM (by its PID) after. Its output goes to a
    file next to the data dir, shown if it exits or is not ready in time."""
    up_log = data_dir.parent / f"{data_dir.name}-up.log"
    with up_log.open("wb") as out:
        up = subprocess.Popen([*SPACEGRID, "up", "--pus", str(pus), "--app", APP, "--no-console", *up_args,
                               "--data-dir", str(data_dir)], stdout=out, stderr=subprocess.STDOUT,
                              start_new_session=True)

    def ready() -> None:
        assert up.poll() is None, f"spacegrid up exited with {up.returncode}:\n{up_log.read_text()[-4000:]}"
        _assert(live_members(data_dir) == pus)

    try:
        try:
            eventually_sync(ready, timeout_s=120, interval_s=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- spacegrid up's output:\n{up_log.read_text()[-4000:]}") from exc
        yield
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=90)


def under_load(data_dir: Path, steps: Callable[[], None]) -> History:
    """Run `steps` while 8 workers put fresh keys and increment 8 counters (bounded: 200,000 calls, 200 s); then
    check every acknowledged put reads back and every counter is exact; returns the history."""
    url = json.loads((data_dir / "grid.json").read_text())["nats_url"]
    space, access = load_space(APP), Access.resolve(Access(), data_dir, "client")
    history, stop, failures = History(), threading.Event(), []

    async def load() -> None:
        async with await Client.connect(space, url, access=access) as client:
            await write_load(client, history, ops=200_000, workers=8, time_budget_s=200,
                             on_progress=lambda done: stop.is_set())
            await check_history(client, history, exact=True)

    def run_load() -> None:
        try:
            asyncio.run(load())
        except BaseException as exc:  # the check's AssertionError included: raised below
            failures.append(exc)

    loader = threading.Thread(target=run_load)
    loader.start()
    try:
        steps()
    finally:
        stop.set()
        loader.join(timeout=200)
    assert not loader.is_alive()
    if failures:
        raise failures[0]
    assert history.acked_puts and sum(history.acked_incr.values()) > 0
    assert history.errors == [], history.errors[:5]
    return history


def test_scale_up_then_down_under_writes_loses_nothing(tmp_path: Path) -> None:
    """A grid of 2 PUs under the write load: scale to 3, then to 1; each `scale` returns once every PU owns its
    fair share and every partition is served; no acknowledged write lost, counters exact, no call failed."""
    data_dir = tmp_path / "grid"
    with running_grid(data_dir, pus=2):
        def steps() -> None:
            for pus in (3, 1):
                done = sg(data_dir, "scale", str(pus), timeout_s=200)
                assert done.returncode == 0, done.stdout + done.stderr
                assert live_members(data_dir) == pus

        under_load(data_dir, steps)


def test_roll_replaces_every_pu_of_a_nats_cluster_grid_under_writes(tmp_path: Path) -> None:
    """The topology of the Kubernetes deployment on one machine (`spacegrid up --nats-cluster 3`: three nats-servers,
    R3 streams and KV) with 3 PUs under the write load: `spacegrid roll` replaces each PU, one at a time (a new one
    takes its share before an old one hands its partitions off); afterwards none of the first PUs runs, 3 PUs serve
    every partition, no acknowledged write is lost, counters are exact, no call failed."""
    data_dir = tmp_path / "grid"
    with running_grid(data_dir, "--nats-cluster", "3", pus=3):
        first = set(json.loads((data_dir / "grid.json").read_text())["pus"])

        def steps() -> None:
            done = sg(data_dir, "roll", timeout_s=300)
            assert done.returncode == 0, done.stdout + done.stderr

        under_load(data_dir, steps)
        now = set(json.loads((data_dir / "grid.json").read_text())["pus"])
        assert len(now) == 3 and not now & first and live_members(data_dir) == 3


def _assert(condition: bool) -> None:
    assert condition
