"""Diagnostics for bench/tickets.py over the measured window: py-spy profiles (--profile) and the time processes
spend in the cyclic GC (--gc-probe). Window hooks of spacegrid.benchmark.measure; not used by `spacegrid bench`."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PY_SPY_RATE_HZ = 200
GC_DUMP_WAIT_S = 5.0  # a probed process writes its GC totals within this of SIGUSR1
GC_DUMP_POLL_S = 0.05


def python_pids(pids: dict[str, int]) -> dict[str, int]:
    """The target's Python processes (PUs, the echo responder) among its processes."""
    return {name: pid for name, pid in pids.items() if name.startswith(("pu", "echo"))}


class PySpy:
    """py-spy (non-blocking, collapsed stacks) on the client and the given Python processes for `duration_s`."""

    def __init__(self, directory: Path, run_name: str, pids: dict[str, int], duration_s: float) -> None:
        self.directory, self.run_name, self.pids, self.duration_s = directory, run_name, pids, duration_s
        self.spies: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        spy = Path(sys.executable).parent / "py-spy"
        if not spy.exists():
            raise SystemExit(f"--profile needs py-spy in the venv: {sys.executable} -m pip install py-spy")
        self.directory.mkdir(parents=True, exist_ok=True)
        for name, pid in {"client": os.getpid(), **self.pids}.items():
            out = self.directory / f"{self.run_name}.{name}.txt"
            self.spies.append(await asyncio.create_subprocess_exec(
                str(spy), "record", "--pid", str(pid), "--duration", str(max(1, int(self.duration_s))), "--rate",
                str(PY_SPY_RATE_HZ), "--nonblocking", "--format", "raw", "--output", str(out),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL))

    async def stop(self) -> list[str]:
        for spy in self.spies:
            await spy.wait()  # py-spy ends after its --duration
        return [str(path) for path in sorted(self.directory.glob(f"{self.run_name}.*.txt"))]


class GcProbe:
    """This process's collector through gc.callbacks; the PUs' through bench/gcprobe/sitecustomize.py, which dumps
    their totals on SIGUSR1 into `directory`."""

    def __init__(self, directory: Path, pids: dict[str, int]) -> None:
        self.directory, self.pids = directory, pids
        self.totals = {g: [0, 0.0] for g in range(3)}
        self._started_s = 0.0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started_s = time.perf_counter()
        else:
            self.totals[info["generation"]][0] += 1
            self.totals[info["generation"]][1] += time.perf_counter() - self._started_s

    def _client(self) -> dict[str, dict[str, float]]:
        return {str(g): {"runs": t[0], "seconds": t[1]} for g, t in self.totals.items()}

    async def _dumps(self) -> dict[str, Any]:
        """Ask every probed process for its totals and wait (bounded) until each has written them."""
        paths = {name: self.directory / f"gc-{pid}.json" for name, pid in self.pids.items()}
        for path in paths.values():
            path.unlink(missing_ok=True)
        for pid in self.pids.values():
            os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + GC_DUMP_WAIT_S
        while not all(path.exists() for path in paths.values()) and time.monotonic() < deadline:
            await asyncio.sleep(GC_DUMP_POLL_S)  # waiting for the files to appear, bounded
        return {name: json.loads(path.read_text()) for name, path in paths.items() if path.exists()}

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        gc.callbacks.append(self._on_gc)
        self.client_0 = self._client()
        self.first = await self._dumps()

    async def stop(self) -> dict[str, Any]:
        result = {"client": _delta(self.client_0, self._client())}
        gc.callbacks.remove(self._on_gc)
        second = await self._dumps()
        for name, record in second.items():
            if name in self.first:
                result[name] = {**_delta(self.first[name]["generations"], record["generations"]),
                                "objects_tracked": record["objects_tracked"]}
        return result


def _delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {g: {"runs": b[g]["runs"] - a[g]["runs"], "seconds": round(b[g]["seconds"] - a[g]["seconds"], 3)}
            for g in b}


PROFILE_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [  # matched on "function (file)", innermost frame first
    ("msgpack encode/decode", ("packb (", "unpackb (", "encode (spacegrid/codec", "decode (spacegrid/codec",
                               "encode_bounded (", "encode_array (", "chunks (", "ok_reply (", "error_reply (",
                               "request (spacegrid/protocol")),
    ("handler time limit", ("timelimit.py", "contextlib.py")),
    ("ticket handlers (user code)", ("examples/tickets.py",)),
    ("key checks and routing", ("HandlerContext.check (", "check_key (", "routing_key (", "partition_of (")),
    ("partition state machine", ("core/partition.py", "core/context.py")),
    ("changelog append", ("engine/changelog.py",)),
    ("nats-py publish + socket write", ("Client.publish (", "Client._send_publish (", "Client._send_command (",
                                        "Client._flusher (", "writelines (", "TcpTransport.write")),
    ("nats-py receive + dispatch", ("Client._read_loop (", "Parser.parse (", "Client._process_msg (",
                                    "Subscription.", "Queue.", "_get_loop (", "StreamReader.", "TcpTransport.read")),
    ("PU driver (unit/: serving, appender, replies, driver)", ("unit/serving.py", "unit/appender.py",
                                                               "unit/replies.py", "unit/driver.py", "unit/pu.py",
                                                               "protocol.py")),
    ("client (client/client.py)", ("client/client.py",)),
    ("bench driver", ("benchmark/workload.py", "bench/tickets.py", "random.py")),
    ("event loop", ("asyncio/", "runners.py", "uvloop")),
]


def _frames(stack: str) -> list[str]:
    frames = []
    for frame in stack.split(";"):
        name, _, rest = frame.partition(" (")
        frames.append(f"{name} ({rest.split(':')[0].rstrip(')')})")
    return frames


def summarize_profile(path: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function, and shares per component (each sample counted once, at its
    innermost frame that matches PROFILE_CATEGORIES), from a py-spy raw (collapsed) file."""
    self_samples: dict[str, int] = {}
    incl_samples: dict[str, int] = {}
    categories: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = _frames(stack)
        self_samples[frames[-1]] = self_samples.get(frames[-1], 0) + count
        for frame in set(frames):
            incl_samples[frame] = incl_samples.get(frame, 0) + count
        category = next((name for frame in reversed(frames) for name, needles in PROFILE_CATEGORIES
                         if any(n in frame for n in needles)), "other")
        categories[category] = categories.get(category, 0) + count
    if not total:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {total} samples", "  by component:"]
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in sorted(categories.items(), key=lambda kv: -kv[1])]
    lines.append("  self:")
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in sorted(self_samples.items(), key=lambda kv: -kv[1])[:top]]
    lines.append("  inclusive:")
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in sorted(incl_samples.items(), key=lambda kv: -kv[1])[:top]]
    return "\n".join(lines)
