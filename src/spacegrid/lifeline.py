"""Children that cannot outlive their launcher: the parent-death signal and a lifeline pipe.

Every long-lived child (nats-server, a PU) is started through `spawn()`:

- On Linux the child asks the kernel for SIGKILL when its parent dies (`prctl(PR_SET_PDEATHSIG)`), set between fork
  and exec, so it holds from the first instruction of the child's program, through an `ip netns exec` wrapper (it
  execs; PDEATHSIG survives exec of a binary that is not set-user-ID). The kernel sends it when the *thread* that
  forked exits, so `spawn` forks from the main thread, or else from one spawner thread that lives as long as the
  process.
- PUs also get the read end of a lifeline pipe whose write end only the launcher holds (`LIFELINE_FD_ENV`): when the
  launcher dies, however, the pipe reads EOF and the PU exits (`watch_lifeline`). It covers the systems without
  PDEATHSIG.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess  # nosec B404  # spawn(): argv lists, no shell
import sys
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any, Final

log = logging.getLogger("spacegrid.lifeline")

PR_SET_PDEATHSIG: Final = 1
LIFELINE_FD_ENV: Final = "SPACEGRID_LIFELINE_FD"
LIFELINE_EXIT_CODE: Final = 70  # a PU whose launcher died (EX_SOFTWARE: not a clean stop, not the PU's fault)


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return prctl  # type: ignore[no-any-return]


_PRCTL: Final = _load_prctl()  # resolved once in the parent: the child only calls it (nothing to import after fork)


def parent_death_signal_supported() -> bool:
    return _PRCTL is not None


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: SIGKILL this child when its parent dies; exit at once if the parent is already gone."""
    prctl = _PRCTL

    def preexec() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died between fork and prctl: the signal will never come
            os._exit(LIFELINE_EXIT_CODE)

    return preexec


_spawner: concurrent.futures.ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def _spawner_thread() -> concurrent.futures.ThreadPoolExecutor:
    """One thread, alive until interpreter exit, that forks for callers on short-lived threads."""
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="spacegrid-spawner")
        return _spawner


def spawn(command: Sequence[str], *, stdout: IO[bytes] | int | None = None, lifeline: Lifeline | None = None,
          **popen_kwargs: Any) -> subprocess.Popen[bytes]:
    """Popen(command) in a new session (a Ctrl-C at the terminal reaches only the launcher, which stops its
    children in order), killed by the kernel when this process dies. With `lifeline`, the child also inherits the
    pipe's read end, its number in the environment under LIFELINE_FD_ENV."""
    kwargs: dict[str, Any] = dict(stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT,
                                  start_new_session=True, **popen_kwargs)
    if lifeline is not None:
        kwargs["pass_fds"] = (*kwargs.get("pass_fds", ()), lifeline.read_fd)
        kwargs["env"] = {**(kwargs.get("env") or os.environ), LIFELINE_FD_ENV: str(lifeline.read_fd)}

    def start() -> subprocess.Popen[bytes]:
        # preexec_fn is safe here with threads: the child only calls a ctypes function resolved before the fork
        return subprocess.Popen(list(command), preexec_fn=_die_with_parent(os.getpid()), **kwargs)  # noqa: PLW1509  # nosec B603  # argv list, no shell

    if threading.current_thread() is threading.main_thread():
        return start()
    return _spawner_thread().submit(start).result()


def stop_child(process: subprocess.Popen[Any], wait_s: float) -> None:
    """SIGTERM a child this process started, then SIGKILL if it has not exited within wait_s (bounded: at most
    2 x wait_s)."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=wait_s)


class Lifeline:
    """A pipe: the launcher keeps the write end (never inherited), children get the read end. Nothing is ever
    written; the read end sees EOF once every copy of the write end is closed, i.e. when the launcher is gone."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()  # both close-on-exec; spawn() passes only read_fd on
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.read_fd)
            os.close(self._write_fd)


def lifeline_fd_from_env() -> int | None:
    """The lifeline's read end this process inherited from its launcher, if any."""
    value = os.environ.get(LIFELINE_FD_ENV)
    if not value:
        return None
    try:
        fd = int(value)
        os.fstat(fd)
    except (ValueError, OSError):
        log.warning("ignoring %s=%r: not an open file descriptor", LIFELINE_FD_ENV, value)
        return None
    return fd


def watch_lifeline(fd: int, on_launcher_gone: Callable[[], None]) -> threading.Thread:
    """Call `on_launcher_gone` (from a daemon thread) once `fd` reads EOF: the launcher died."""

    def watch() -> None:
        try:
            while os.read(fd, 1):
                pass  # nobody writes; a byte would be a bug, ignored
        except OSError:
            pass
        on_launcher_gone()

    thread = threading.Thread(target=watch, name="spacegrid-lifeline", daemon=True)
    thread.start()
    return thread


def exit_because_launcher_died(launcher: str = "launcher") -> None:
    """What a PU does when its lifeline breaks: say so and exit at once (its grid is being torn down)."""
    print(f"spacegrid: the {launcher} that started this process is gone: exiting", file=sys.stderr, flush=True)
    os._exit(LIFELINE_EXIT_CODE)
