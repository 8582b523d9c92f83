"""One process per data dir: an exclusive flock on DATA_DIR/lock, holding the holder's PID and role.

The kernel drops the lock when its holder dies, however it dies, so a crashed launcher never blocks the next
`spacegrid up`. The lock file itself is never deleted (deleting it would let two processes lock two different files
of the same name); its content names the last holder and matters only while the lock is held.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Final, Self

from spacegrid.errors import ConfigError
from spacegrid.limits import DATA_DIR_LOCK_READ_S

LOCK_FILE: Final = "lock"
LOCK_READ_INTERVAL_S: Final = 0.02


class DataDirLock:
    """`DataDirLock.acquire(dir, role)` or ConfigError naming the holder; `release()` (idempotent) to give it up."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path, role: str) -> DataDirLock:
        """Lock `data_dir` for this process (`role` says what holds it, e.g. "spacegrid up"); at once, no waiting."""
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inheritable: children never hold the lock
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"{data_dir} is in use by {describe_holder(read_holder(path))}: "
                              f"one grid or PU per data dir (stop that one, or pass another --data-dir)") from None
        except BaseException:
            os.close(fd)
            raise
        record = json.dumps({"pid": os.getpid(), "role": role}).encode() + b"\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor of the open file drops the flock

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def read_holder(path: Path, wait_s: float = DATA_DIR_LOCK_READ_S) -> dict[str, object]:
    """The holder's record; a holder that has just taken the lock may not have written it yet: wait that long."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            text = path.read_text()
            if text.strip():
                return dict(json.loads(text))
        except (OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            return {}
        time.sleep(LOCK_READ_INTERVAL_S)


def describe_holder(holder: dict[str, object]) -> str:
    pid = holder.get("pid")
    if pid is None:
        return "another process (its PID is not in the lock file yet)"
    return f"{holder.get('role', 'a process')} (pid {pid})"


def process_running(pid: int) -> bool:
    """Is `pid` a live process (not gone, not a zombie waiting for its parent)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not os.path.isdir("/proc")  # no procfs: kill(0) said alive
    except OSError:
        return True
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")
