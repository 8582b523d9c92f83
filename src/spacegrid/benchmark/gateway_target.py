"""The HTTP gateway as a target: the ticket workload through `spacegrid gateway` (aiohttp, one keep-alive connection
per request in flight) on a grid started for the run, so that a run shows what the HTTP hop costs next to the Python
client. (httpx, measured first, spent 1.1 ms of client CPU per request and fell to 165 requests/s at 64 in flight
against this gateway; aiohttp 107 µs and 3,100/s: the client, not the gateway, was what that run measured.)"""

from __future__ import annotations

import asyncio
import json
import select
import shutil
import subprocess  # nosec B404  # the gateway process: an argv list (sys.executable), no shell
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final
from urllib.parse import quote

from spacegrid.benchmark.grid_target import GridProcesses, GridTarget, started_grid
from spacegrid.errors import ConfigError, SpacegridError
from spacegrid.gateway.auth import ensure_key, mint_token
from spacegrid.launcher import DEFAULT_APP
from spacegrid.lifeline import spawn, stop_child

if TYPE_CHECKING:  # aiohttp is in the bench extras: imported when the target runs
    import aiohttp

GATEWAY_TARGETS: Final = ("gateway1", "gateway2")  # the gateway on a grid of 1 or 2 PUs, fsync as grid1/grid2
GATEWAY_START_WAIT_S: Final = 30.0
GATEWAY_STOP_WAIT_S: Final = 10.0
GETS_AT_ONCE: Final = 64  # the final check's reads in flight through the gateway
HTTP_TIMEOUT_S: Final = 30.0  # one request (the grid's call deadline is 10 s)


class HttpClient:
    """The part of spacegrid's Client that GridTarget uses, over the gateway's HTTP API."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.counters = {"requests": 0}

    async def _json(self, method: str, path: str, body: Any = None, missing_ok: bool = False) -> Any:
        self.counters["requests"] += 1
        async with self.http.request(method, path, data=None if body is None else json.dumps(body)) as response:
            text = await response.text()
        if missing_ok and response.status == 404 and json.loads(text).get("error") == "NotFound":
            return None
        if response.status != 200:
            raise SpacegridError(f"{method} {path}: {response.status} {text[:300]}")
        return json.loads(text)

    async def execute(self, handler: str, key: str, args: Any = None) -> Any:
        return (await self._json("POST", f"/handlers/{handler}/{quote(key, safe='')}", args))["result"]

    async def get(self, map_name: str, key: str) -> Any:
        found = await self._json("GET", f"/maps/{map_name}/entries/{quote(key, safe='')}", missing_ok=True)
        return None if found is None else found["value"]

    async def get_many(self, map_name: str, keys: list[str]) -> dict[str, Any]:
        gate = asyncio.Semaphore(GETS_AT_ONCE)

        async def one(key: str) -> Any:
            async with gate:
                return await self.get(map_name, key)

        values = await asyncio.gather(*(one(key) for key in keys))
        return {key: value for key, value in zip(keys, values) if value is not None}

    async def query(self, name: str, args: Any = None) -> Any:
        return (await self._json("POST", f"/queries/{name}", args))["result"]


class GatewayTarget(GridTarget):
    """GridTarget's workload and check, every call an HTTP request to the gateway; its process's CPU counts."""

    def __init__(self, grid: GridProcesses, gateway_url: str, gateway_pid: int, token: str, events: int,
                 concurrency: int) -> None:
        super().__init__(grid, events)
        self.gateway_url, self.gateway_pid, self.token, self.concurrency = gateway_url, gateway_pid, token, concurrency

    async def open(self) -> None:
        import aiohttp

        self.client = HttpClient(aiohttp.ClientSession(
            self.gateway_url, connector=aiohttp.TCPConnector(limit=self.concurrency),
            timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}))

    async def close(self) -> None:
        await self.client.http.close()

    async def window_mark(self, phase: str) -> None:
        self.counters_at[phase] = dict(self.client.counters)

    def pids(self) -> dict[str, int]:
        return {**self.grid.pids, "gateway": self.gateway_pid}

    def describe(self) -> dict[str, Any]:
        start, end = self.counters_at.get("start", {}), self.counters_at.get("end", {})
        plural = "s" if self.grid.pus > 1 else ""
        return {"system": f"spacegrid gateway (HTTP/1.1, aiohttp), {self.grid.pus} PU{plural}",
                "durability": self.grid.durability, "setting": self.grid.setting,
                "counters": {"http_requests": end.get("requests", 0) - start.get("requests", 0)}}


def _drain(stream: IO[bytes]) -> None:
    for _ in stream:
        pass


@contextmanager
def started_gateway(grid: GridProcesses) -> Iterator[tuple[str, int, str]]:
    """`spacegrid gateway` on `grid` (its client credential, a token key of its own): (URL, pid, client token)."""
    key_dir = Path(tempfile.mkdtemp(prefix="spacegrid-bench-gateway-"))
    key_file = key_dir / "gateway.key"
    token = mint_token(ensure_key(key_file), "client", 0, time.time())
    process = spawn([sys.executable, "-m", "spacegrid.cli.main", "gateway", "--nats", grid.url, "--app", DEFAULT_APP,
                     "--token-key", str(key_file), "--port", "0", *grid.access.arguments()],
                    stdout=subprocess.PIPE)  # its stderr too
    try:
        deadline_s, line = time.monotonic() + GATEWAY_START_WAIT_S, b""
        while not line.startswith(b"gateway: "):
            ready, _, _ = select.select([process.stdout], [], [], max(deadline_s - time.monotonic(), 0))
            if not ready or process.poll() is not None or process.stdout is None:
                raise ConfigError(f"the gateway did not print its URL within {GATEWAY_START_WAIT_S:g} s")
            line = process.stdout.readline()
        threading.Thread(target=_drain, args=(process.stdout,), daemon=True).start()  # a full pipe would stall it
        yield line.decode().split()[-1].rstrip("/"), process.pid, token
    finally:
        stop_child(process, GATEWAY_STOP_WAIT_S)
        shutil.rmtree(key_dir, ignore_errors=True)


@contextmanager
def on_started_gateway(pus: int, sync_interval: str, store: str, keep: bool, secure: bool, events: int,
                       concurrency: int) -> Iterator[GatewayTarget]:
    with started_grid(pus, sync_interval, store, keep, secure) as grid, started_gateway(grid) as (url, pid, token):
        yield GatewayTarget(grid, url, pid, token, events, concurrency)
