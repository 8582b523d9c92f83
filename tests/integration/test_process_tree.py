"""The process tree of `spacegrid up` and of a PU: nothing outlives the launcher, one grid per data dir, bounded stops,
and a PU that gives up on a NATS that is gone (issue 9, item 6)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from spacegrid.datadir import DataDirLock, process_running
from spacegrid.engine.server import NatsServerProcess
from spacegrid.errors import ConfigError
from spacegrid.lifeline import spawn
from spacegrid.testing.apps import APP
from spacegrid.testing.eventually import eventually_sync

SPACEGRID = [sys.executable, "-m", "spacegrid.cli.main"]
CHILDREN_GONE_S = 5.0  # after SIGKILL of the launcher, every child is gone within this
EXIT_SLACK_S = 3.0  # a process's own start-up and interpreter exit, on top of the bound it enforces


def start_up(data_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    """`spacegrid up` in its own session, its output in DATA_DIR.up.log (a pipe nobody reads could block it)."""
    with open(f"{data_dir}.up.log", "ab") as log:
        return subprocess.Popen([*SPACEGRID, "up", "--data-dir", str(data_dir), *args], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def sg(data_dir: Path, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SPACEGRID, *args, "--data-dir", str(data_dir)], capture_output=True, text=True,
                          timeout=timeout_s, check=False)


def wait_grid_file(data_dir: Path, pus: int, up: subprocess.Popen[bytes], timeout_s: float = 60) -> dict[str, Any]:
    grid: dict[str, Any] = {}

    def written() -> None:
        assert up.poll() is None, f"spacegrid up exited with {up.returncode}"
        try:
            grid.update(json.loads((data_dir / "grid.json").read_text()))
        except (OSError, ValueError) as exc:
            raise AssertionError(f"no grid.json yet: {exc}") from exc
        assert len(grid["pus"]) == pus and grid["nats_pids"], grid

    eventually_sync(written, timeout_s=timeout_s, interval_s=0.1)
    return grid


def wait_ready(data_dir: Path, timeout_s: float = 90) -> None:
    def ready() -> None:
        done = sg(data_dir, "status", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["ready"] is True

    eventually_sync(ready, timeout_s=timeout_s, interval_s=0.2)


def assert_gone(pids: list[int]) -> None:
    assert [pid for pid in pids if process_running(pid)] == []


def _assert_no_path(path: Path) -> None:
    assert not path.exists(), path


def stop_up(up: subprocess.Popen[bytes]) -> None:
    if up.poll() is None:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()


@pytest.mark.parametrize("store", ["none", "embedded"])
def test_sigkill_of_the_launcher_takes_every_child_with_it(tmp_path: Path, store: str) -> None:
    """After `kill -9` of `spacegrid up`, its nats-server and every PU are gone within 5 s (nothing orphaned), and
    the CLI then says the grid's launcher is gone instead of trying to reach its NATS."""
    data_dir = tmp_path / "grid"
    up = start_up(data_dir, "--pus", "2", "--store", store)
    try:
        grid = wait_grid_file(data_dir, pus=2, up=up)
        assert grid["launcher_pid"] == up.pid
        children = [*grid["nats_pids"], *grid["pus"]]
        assert all(process_running(pid) for pid in children)
    finally:
        up.kill()  # SIGKILL, by PID
        up.wait()
    eventually_sync(lambda: assert_gone(children), timeout_s=CHILDREN_GONE_S, interval_s=0.05)
    done = sg(data_dir, "status")
    assert done.returncode == 1 and f"its launcher (pid {up.pid}) is gone" in done.stderr, done.stderr


def test_a_second_up_or_pu_on_a_locked_data_dir_is_refused_and_the_first_grid_is_untouched(tmp_path: Path) -> None:
    """While `spacegrid up` runs, a second `spacegrid up` and a `spacegrid pu --data-dir` on the same dir exit at
    once, non-zero, naming the holder's PID; the first grid's grid.json stays as it was; the lock goes with it."""
    data_dir = tmp_path / "grid"
    up = start_up(data_dir, "--pus", "1", "--store", "none")
    try:
        wait_grid_file(data_dir, pus=1, up=up)
        grid_file = (data_dir / "grid.json").read_text()

        started_s = time.monotonic()
        second = sg(data_dir, "up", "--pus", "1", "--store", "none")
        assert second.returncode != 0 and f"pid {up.pid}" in second.stderr, second.stderr
        pu = sg(data_dir, "pu")
        assert pu.returncode != 0 and f"pid {up.pid}" in pu.stderr, pu.stderr
        assert "--nats nats://" in pu.stderr  # how to add a PU to that grid instead
        assert time.monotonic() - started_s < 30  # refused at once: no NATS started, no PU waited for

        assert (data_dir / "grid.json").read_text() == grid_file
        assert up.poll() is None
    finally:
        stop_up(up)
    assert up.returncode == 0
    assert not (data_dir / "grid.json").exists()
    DataDirLock.acquire(data_dir, "test").release()  # free again


def test_the_data_dir_lock_dies_with_its_holder(tmp_path: Path) -> None:
    """A process holding the lock that is SIGKILLed leaves the data dir free for the next one."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, pathlib; from spacegrid.datadir import DataDirLock; "
        f"lock = DataDirLock.acquire(pathlib.Path({str(tmp_path)!r}), 'holder'); print('locked', flush=True); "
        "sys.stdin.read()")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"holder \\(pid {holder.pid}\\)"):
            DataDirLock.acquire(tmp_path, "test")
    finally:
        holder.kill()
        holder.wait()
    DataDirLock.acquire(tmp_path, "test").release()


def test_a_child_spawned_from_a_short_lived_thread_outlives_that_thread(tmp_path: Path) -> None:
    """The parent-death signal fires when the forking *thread* exits: spawn() forks from a thread that lives as
    long as the process, so a child started from a worker thread keeps running after that thread ended."""
    children: list[subprocess.Popen[bytes]] = []
    thread_ids: list[int] = []

    def start_child() -> None:
        thread_ids.append(threading.get_native_id())
        children.append(spawn(["sleep", "60"]))

    worker = threading.Thread(target=start_child)
    worker.start()
    worker.join()
    child = children[0]
    try:
        # the kernel sends the parent-death signal as the thread exits, before its task leaves /proc
        eventually_sync(lambda: _assert_no_path(Path(f"/proc/self/task/{thread_ids[0]}")), timeout_s=5)
        assert child.poll() is None and process_running(child.pid)
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("store, stop_signal, stop_timeout_s", [
    ("postgresql", signal.SIGTERM, None),  # the default bound, 15 s
    ("embedded", signal.SIGINT, 6.0),
])
def test_up_stops_within_its_bound_after_a_pu_was_sigkilled(tmp_path: Path, request: pytest.FixtureRequest,
                                                            store: str, stop_signal: signal.Signals,
                                                            stop_timeout_s: float | None) -> None:
    """With one PU SIGKILLed, SIGTERM (or Ctrl-C's SIGINT) to `spacegrid up` returns within --stop-timeout-s
    (default 15 s; hand-off and store drain included, PostgreSQL store too) and leaves no child behind."""
    store_url = request.getfixturevalue("pg_url") if store == "postgresql" else store
    bound_s = 15.0 if stop_timeout_s is None else stop_timeout_s
    data_dir = tmp_path / "grid"
    args = ["--pus", "3", "--store", store_url]
    if stop_timeout_s is not None:
        args += ["--stop-timeout-s", str(stop_timeout_s)]
    up = start_up(data_dir, *args)
    try:
        grid = wait_grid_file(data_dir, pus=3, up=up)
        wait_ready(data_dir)
        for event in ("E1", "E2", "E3"):  # writes for the store to drain
            created = sg(data_dir, "call", "create_event", event, '{"seats": 10}')
            assert created.returncode == 0, created.stderr
        os.kill(grid["pus"][0], signal.SIGKILL)
        eventually_sync(lambda: assert_gone(grid["pus"][:1]), timeout_s=5)
        started_s = time.monotonic()
        up.send_signal(stop_signal)
        up.wait(timeout=bound_s + 30)
        stopped_in_s = time.monotonic() - started_s
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert stopped_in_s <= bound_s + EXIT_SLACK_S, f"stopped in {stopped_in_s:.1f} s, bound {bound_s} s"
    assert_gone([*grid["nats_pids"], *grid["pus"]])
    assert up.returncode == 0


def start_pu(nats_url: str, log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    store = f"sqlite://{log_path.parent / 'store.db'}"  # the test app has a write-through map
    with open(log_path, "ab") as log:
        return subprocess.Popen([*SPACEGRID, "pu", "--app", APP, "--nats", nats_url, "--store", store, *args], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def wait_log(log_path: Path, text: str, pu: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    def logged() -> None:
        if text in log_path.read_text(errors="replace"):
            return
        if pu.poll() is not None:
            raise RuntimeError(f"PU exited with {pu.returncode} before logging {text!r}:\n{log_path.read_text()}")
        raise AssertionError(f"{text!r} not logged yet")

    try:
        eventually_sync(logged, timeout_s=timeout_s, interval_s=0.05)
    except AssertionError:
        raise AssertionError(f"PU (exit {pu.poll()}) never logged {text!r}:\n{log_path.read_text()}") from None


def test_a_pu_honours_sigterm_within_its_bound_when_nats_is_gone(tmp_path: Path,
                                                                 nats_server: NatsServerProcess) -> None:
    """A serving PU whose nats-server was SIGKILLed exits within --stop-timeout-s of a SIGTERM (no hand-off to
    wait for), and logs the loss of NATS once instead of every reconnect attempt."""
    log_path = tmp_path / "pu.log"
    pu = start_pu(nats_server.url, log_path, "--stop-timeout-s", "4", "--nats-lost-exit-s", "600")
    try:
        wait_log(log_path, "up (pid", pu)
        nats_server.kill()
        wait_log(log_path, "lost the connection to NATS", pu)
        started_s = time.monotonic()
        pu.send_signal(signal.SIGTERM)
        pu.wait(timeout=30)
        stopped_in_s = time.monotonic() - started_s
    finally:
        if pu.poll() is None:
            pu.kill()
            pu.wait()
    assert stopped_in_s <= 4 + EXIT_SLACK_S, f"stopped in {stopped_in_s:.1f} s:\n{log_path.read_text()}"
    assert log_path.read_text().count("Connection refused") <= 1, log_path.read_text()


def test_a_pu_exits_non_zero_once_nats_has_been_gone_longer_than_its_bound(tmp_path: Path,
                                                                            nats_server: NatsServerProcess) -> None:
    """With --nats-lost-exit-s 2, a PU whose nats-server is gone exits non-zero soon after 2 s, saying why; its
    reconnect attempts back off (a handful of attempts, one log line for the loss, not one per attempt)."""
    log_path = tmp_path / "pu.log"
    pu = start_pu(nats_server.url, log_path, "--nats-lost-exit-s", "2", "--stop-timeout-s", "3")
    try:
        wait_log(log_path, "up (pid", pu)
        nats_server.kill()
        lost_s = time.monotonic()
        pu.wait(timeout=30)
        exited_in_s = time.monotonic() - lost_s
    finally:
        if pu.poll() is None:
            pu.kill()
            pu.wait()
    log = log_path.read_text()
    assert pu.returncode != 0, log
    assert "could not reach NATS" in log and "for 2 s" in log, log
    assert 2 <= exited_in_s <= 2 + 3 + EXIT_SLACK_S, f"exited {exited_in_s:.1f} s after the loss:\n{log}"
    assert log.count("Connection refused") <= 1 and log.count("lost the connection to NATS") == 1, log


def test_a_child_under_ip_netns_exec_dies_with_its_launcher(tmp_path: Path) -> None:
    """A process started through `ip netns exec` (how chaos runs its cut-off PU) still dies when the process that
    spawned it is SIGKILLed: the wrapper execs, and the parent-death signal survives the exec."""
    from spacegrid.chaos.netns import NetNamespace, netns_usable

    reason = netns_usable()
    if reason is not None:
        pytest.skip(reason)
    netns = NetNamespace.for_this_process(index=7)
    netns.create()
    launcher = subprocess.Popen([sys.executable, "-c", (
        "import sys; from spacegrid.lifeline import spawn; "
        f"child = spawn([*{netns.wrapper!r}, 'sleep', '600']); print(child.pid, flush=True); sys.stdin.read()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child_pid: int | None = None
    try:
        assert launcher.stdout is not None
        child_pid = int(launcher.stdout.readline())

        def execed() -> None:
            assert Path(f"/proc/{child_pid}/comm").read_text().strip() == "sleep"

        eventually_sync(execed, timeout_s=5)
    finally:
        launcher.kill()
        launcher.wait()
        try:
            if child_pid is not None:
                gone = [child_pid]
                eventually_sync(lambda: assert_gone(gone), timeout_s=CHILDREN_GONE_S)
        finally:
            netns.destroy()
