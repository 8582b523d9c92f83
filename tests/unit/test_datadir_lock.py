"""The data dir lock: one holder at a time, named in the refusal, free again once released."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spacegrid.datadir import LOCK_FILE, DataDirLock, process_running
from spacegrid.errors import ConfigError


def test_a_second_lock_on_a_data_dir_is_refused_naming_the_holder(tmp_path: Path) -> None:
    """While one DataDirLock holds a dir, another (even in the same process) is refused at once with the
    holder's role and PID; after release the dir can be locked again."""
    first = DataDirLock.acquire(tmp_path, "spacegrid up")
    assert json.loads((tmp_path / LOCK_FILE).read_text()) == {"pid": os.getpid(), "role": "spacegrid up"}
    with pytest.raises(ConfigError, match=rf"in use by spacegrid up \(pid {os.getpid()}\)"):
        DataDirLock.acquire(tmp_path, "spacegrid pu")
    first.release()
    first.release()  # idempotent
    with DataDirLock.acquire(tmp_path, "spacegrid pu") as second:
        assert second.held
    assert not second.held


def test_a_lock_is_created_with_its_data_dir(tmp_path: Path) -> None:
    """Locking a dir that does not exist yet creates it (a first `spacegrid up`)."""
    with DataDirLock.acquire(tmp_path / "new" / "dir", "spacegrid up"):
        assert (tmp_path / "new" / "dir" / LOCK_FILE).exists()


def test_process_running_counts_zombies_and_reaped_processes_as_gone() -> None:
    """A child that exited is not running, whether its parent reaped it yet (zombie) or not."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    pid = child.pid
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
    assert not process_running(pid)
    child.wait()
    assert not process_running(pid)
    assert process_running(os.getpid())
