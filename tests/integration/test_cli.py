"""`spacegrid up` and the CLI a person uses, as subprocesses against the embedded default."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from spacegrid.testing.eventually import eventually_sync

SPACEGRID = [sys.executable, "-m", "spacegrid.cli.main"]


def sg(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SPACEGRID, *args, "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_up_serves_the_cli_and_stops_everything_on_sigterm(tmp_path: Path) -> None:
    """`spacegrid up` starts nats-server, PUs and the web console, the CLI and the console's snapshot work against
    it, and SIGTERM stops every process (the console's port refuses connections after)."""
    data_dir = tmp_path / "grid"
    up = subprocess.Popen([*SPACEGRID, "up", "--pus", "2", "--data-dir", str(data_dir)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def ready() -> None:
            assert (data_dir / "grid.json").exists()
            done = sg(data_dir, "status", "--json")
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["ready"] is True

        eventually_sync(ready, timeout_s=90, interval_s=0.2)
        grid: dict[str, Any] = json.loads((data_dir / "grid.json").read_text())
        assert grid["app"] == "spacegrid.examples.tickets:space" and len(grid["pus"]) == 2

        status = json.loads(sg(data_dir, "status", "--json").stdout)
        assert len(status["members"]) == 2 and len(status["partitions"]) == 64
        assert all(p["owner"] in {m["id"] for m in status["members"]} and p["epoch"] >= 1 for p in status["partitions"])
        assert {m["pid"] for m in status["members"]} == set(grid["pus"])

        assert json.loads(sg(data_dir, "call", "create_event", "E9", '{"seats": 5}').stdout) == {"created": True, "seats": 5}
        reserved = sg(data_dir, "call", "reserve", "E9", '{"seats": ["S1"], "holder": "ann"}')
        assert json.loads(reserved.stdout) == {"ok": True, "seats": ["S1"]}
        assert json.loads(sg(data_dir, "get", "seats", "E9:S1@E9").stdout)["value"] == {"holder": "ann"}
        put = json.loads(sg(data_dir, "put", "events", "note", '{"text": "hi"}').stdout)
        conflict = sg(data_dir, "put", "events", "note", '"x"', "--expected-version", str(put["version"] + 100))
        assert conflict.returncode == 1 and "version" in conflict.stderr
        assert json.loads(sg(data_dir, "delete", "events", "note").stdout) == {"deleted": True}
        assert sg(data_dir, "get", "events", "note").returncode == 3
        assert json.loads(sg(data_dir, "query", "sales").stdout) == {"events": 1, "sold": 1, "held_seats": 1}
        unknown = sg(data_dir, "call", "nosuch", "k")
        assert unknown.returncode == 1 and "no handler 'nosuch'" in unknown.stderr
        assert sg(data_dir, "put", "events", "k", "{not json").returncode == 2
        table = sg(data_dir, "status")
        assert table.returncode == 0 and "64/64 partitions active" in table.stdout
        console_urls = [line.split()[-1] for line in (data_dir / "logs" / "console.log").read_text().splitlines()
                        if line.startswith("console: ")]
        assert len(console_urls) == 1, console_urls

        def console_sees_the_grid() -> None:  # the console's own watches fill in after it starts
            snapshot = json.loads(urllib.request.urlopen(console_urls[0] + "api/snapshot", timeout=10).read())
            assert len(snapshot["members"]) == 2 and snapshot["active_partitions"] == 64, snapshot

        eventually_sync(console_sees_the_grid, timeout_s=30, interval_s=0.2)
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)
    pids = [*grid["nats_pids"], *grid["pus"]]
    eventually_sync(lambda: _assert_all_gone(pids), timeout_s=10)
    assert not (data_dir / "grid.json").exists()
    with pytest.raises(OSError):
        urllib.request.urlopen(console_urls[0], timeout=5)


def _assert_all_gone(pids: list[int]) -> None:
    assert [pid for pid in pids if _alive(pid)] == []


def test_cli_without_a_grid_says_what_to_do(tmp_path: Path) -> None:
    """With no grid at --data-dir, commands fail with a hint to start one."""
    done = sg(tmp_path, "get", "events", "x")
    assert done.returncode == 1 and "spacegrid up" in done.stderr


def test_pus_serve_prometheus_metrics_with_replication_lag(tmp_path: Path) -> None:
    """Each PU started by a local grid serves Prometheus metrics: counters, partitions, replication lag of its hot
    backups per partition, write-behind lag (in seconds) and the store's availability, entries and cache counters per
    map, request latency histograms by operation kind, error replies by class, the process collectors, and the
    liveness and readiness probes (200 on a serving PU)."""
    import asyncio
    import urllib.request

    from spacegrid import Client
    from spacegrid.errors import VersionConflict
    from spacegrid.launcher import LocalGrid
    from spacegrid.testing.apps import APP
    from spacegrid.testing.eventually import eventually_sync

    grid = LocalGrid(tmp_path / "grid", APP)

    async def traffic() -> None:
        async with await Client.connect(grid.space, grid.url, access=grid.client_access) as client:
            for i in range(32):
                await client.put("kv", f"k{i}", i)
                await client.get("kv", f"k{i}")
            for i in range(32):
                try:
                    await client.put("kv", f"k{i}", -1, expected_version=10**6)  # refused by its PU
                except VersionConflict:
                    pass

    try:
        grid.start(2)
        grid.wait_ready(60, members=2)
        asyncio.run(traffic())

        def scraped() -> None:
            for member in grid.status().to_json()["members"]:
                assert member["metrics_url"], member
                text = urllib.request.urlopen(member["metrics_url"], timeout=5).read().decode()
                assert 'spacegrid_partitions_active{member="%s"} 8.0' % member["id"] in text
                assert "spacegrid_replication_lag_records{" in text
                assert "spacegrid_requests_total{" in text
                assert "spacegrid_write_behind_lag_records{" in text and "spacegrid_store_available{" in text
                assert re.search(r'spacegrid_map_entries\{map="kv",member="[^"]+"\}', text)
                assert re.search(r'spacegrid_map_misses_total\{map="bounded",member="[^"]+"\}', text)
                assert "spacegrid_write_behind_lag_seconds{" in text
                for kind in ("get", "put"):
                    assert re.search(r'spacegrid_request_duration_seconds_count\{kind="%s",member="[^"]+"\} [1-9]' % kind,
                                     text), kind
                assert re.search(r'spacegrid_request_duration_seconds_bucket\{kind="put",le="\+Inf"', text)
                assert "process_resident_memory_bytes " in text and "python_gc_objects_collected_total" in text
                base = member["metrics_url"].removesuffix("/metrics")
                for probe in ("/healthz", "/readyz"):
                    with urllib.request.urlopen(base + probe, timeout=5) as response:
                        assert response.status == 200, probe
            texts = [urllib.request.urlopen(m["metrics_url"], timeout=5).read().decode()
                     for m in grid.status().to_json()["members"]]
            assert any(re.search(r'spacegrid_errors_total\{code="conflict",member="[^"]+"\} [1-9]', t) for t in texts)

        eventually_sync(scraped, timeout_s=20)
    finally:
        grid.stop()
