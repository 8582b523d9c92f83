"""The web console in a real browser (Debian's chromium driven by Playwright): `spacegrid console` serves a page
that shows the grid's PUs, its partitions by owner and live charts, and a PU killed appears on its events timeline
within seconds, as the PU count drops."""

from __future__ import annotations

import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from spacegrid.cli.console import stop_console
from spacegrid.launcher import LocalGrid

CHROMIUM_BINARIES = ("/usr/lib/chromium/chromium",)  # Debian's binary (/usr/bin/chromium is a wrapper script)
URL_WAIT_S = 30.0


def chromium() -> str:
    for path in CHROMIUM_BINARIES:
        if Path(path).is_file():
            return path
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed: run scripts/setup (it installs Debian's chromium as root)")
    return found


@pytest.fixture
def console_url(grid_factory: Callable[..., LocalGrid]) -> Iterator[tuple[LocalGrid, str]]:
    """A grid of 2 PUs and `spacegrid console` on it (a free port); the console is stopped by its PID after."""
    grid = grid_factory(pus=2)
    process = subprocess.Popen([sys.executable, "-m", "spacegrid.cli.main", "console", "--data-dir",
                                str(grid.data_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline_s = time.monotonic() + URL_WAIT_S
        line = ""
        while not line.startswith("console: "):
            remaining_s = deadline_s - time.monotonic()
            ready, _, _ = select.select([process.stdout], [], [], max(remaining_s, 0))
            assert ready and process.poll() is None, f"no console URL: {process.stderr.read() if process.stderr else ''}"
            line = process.stdout.readline() if process.stdout else ""
        yield grid, line.split()[-1]
    finally:
        stop_console(process)  # type: ignore[arg-type]  # the same Popen, opened in text mode


def test_the_console_shows_the_grid_and_a_pu_kill_on_its_timeline(console_url: tuple[LocalGrid, str]) -> None:
    """The page loads and shows 2 PUs, a row per PU, a cell per partition and the joins on the timeline; after a
    SIGKILL of one PU, a member_dead event appears on the timeline and the PU count drops to 1."""
    grid, url = console_url
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function("document.getElementById('pu-count').textContent === '2'", timeout=15_000)
            assert page.locator("#members tbody tr").count() == 2
            assert page.locator("#partitions div").count() == grid.space.partitions
            page.wait_for_selector('#timeline li[data-kind="member_joined"]', timeout=15_000)
            grid.pus[0].signal(signal.SIGKILL)
            page.wait_for_selector('#timeline li[data-kind="member_dead"]', timeout=30_000)
            page.wait_for_function("document.getElementById('pu-count').textContent === '1'", timeout=30_000)
        finally:
            browser.close()


def test_top_once_shows_each_pu_with_its_rates(grid_factory: Callable[..., LocalGrid]) -> None:
    """`spacegrid top --once` prints the grid's header and a row per PU (ops/s, latency, partitions, lags) after
    two reads; under writes, the PUs' write latency is a number."""
    grid = grid_factory(pus=2)
    writer = subprocess.Popen([sys.executable, "-m", "spacegrid.cli.main", "bench", "--data-dir", str(grid.data_dir),
                               "--targets", "grid", "--duration-s", "6", "--warmup-s", "0", "--concurrency", "4"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        done = subprocess.run([sys.executable, "-m", "spacegrid.cli.main", "top", "--once", "--interval-s", "1",
                               "--data-dir", str(grid.data_dir)], capture_output=True, text=True, timeout=60,
                              check=False)
    finally:
        writer.kill()
        writer.wait(timeout=30)
    assert done.returncode == 0, done.stderr
    members = [m["id"] for m in grid.status().to_json()["members"]]
    assert "partitions active 64/64" in done.stdout and all(member in done.stdout for member in members), done.stdout
    rows = [line.strip() for line in done.stdout.splitlines() if any(line.strip().startswith(m) for m in members)]
    assert len(rows) == 2 and all(row.split()[1] == "yes" for row in rows), rows
