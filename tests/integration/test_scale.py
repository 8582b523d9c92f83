"""`spacegrid scale N` on a grid `spacegrid up` runs (issue 12, item 3): PUs started take their fair share by live
migration, PUs stopped hand their partitions off first; under a write load recorded as a history, no acknowledged
write is lost and the counters are exact."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
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


def members(data_dir: Path) -> int:
    done = sg(data_dir, "status", "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["ready"] is True
    return sum(1 for member in status["members"] if member["alive"])


def test_scale_up_then_down_under_writes_loses_nothing(tmp_path: Path) -> None:
    """A grid of 2 PUs under a bounded write load (puts of fresh keys, increments of 8 counters): scale to 3, then
    to 1; each `scale` returns once every PU owns its fair share and every partition is served; afterwards every
    acknowledged put reads back and every counter equals its acknowledged increments; no call failed."""
    data_dir = tmp_path / "grid"
    up = subprocess.Popen([*SPACEGRID, "up", "--pus", "2", "--app", APP, "--no-console", "--data-dir", str(data_dir)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        eventually_sync(lambda: _assert(members(data_dir) == 2), timeout_s=90, interval_s=0.3)
        url = json.loads((data_dir / "grid.json").read_text())["nats_url"]
        space = load_space(APP)
        access = Access.resolve(Access(), data_dir, "client")
        history = History()
        stop = threading.Event()

        async def load() -> None:
            async with await Client.connect(space, url, access=access) as client:
                await write_load(client, history, ops=200_000, workers=8, time_budget_s=150,
                                 on_progress=lambda done: stop.is_set())
                await check_history(client, history, exact=True)

        failures: list[BaseException] = []

        def run_load() -> None:
            try:
                asyncio.run(load())
            except BaseException as exc:  # the check's AssertionError included: raised in the test below
                failures.append(exc)

        loader = threading.Thread(target=run_load)
        loader.start()
        try:
            for pus in (3, 1):
                done = sg(data_dir, "scale", str(pus), timeout_s=200)
                assert done.returncode == 0, done.stdout + done.stderr
                assert members(data_dir) == pus
        finally:
            stop.set()
            loader.join(timeout=200)
        assert not loader.is_alive()
        if failures:
            raise failures[0]
        assert history.acked_puts and sum(history.acked_incr.values()) > 0
        assert history.errors == [], history.errors[:5]
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=90)


def _assert(condition: bool) -> None:
    assert condition
