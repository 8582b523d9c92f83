"""`spacegrid bench` as a subprocess against a grid it starts and the local PostgreSQL and Redis."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

from spacegrid.testing.fixtures import PG_DSN

SPACEGRID = [sys.executable, "-m", "spacegrid.cli.main"]
REDIS_URL = os.environ.get("SPACEGRID_TEST_REDIS", "redis://127.0.0.1:6379")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_TIMEOUT_S = 300


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (AssertionError if the file is no PNG)."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_bench_runs_grid_postgres_and_redis_and_checks_each(tmp_path: Path) -> None:
    """A quick run against grid1, pg-on and redis-always exits 0; its JSON has every target with ops, a passed
    invariant check and ratios to pg-on; the plots are PNG images; Redis's appendfsync is given back."""
    import redis

    before = redis.Redis.from_url(REDIS_URL, decode_responses=True).config_get("append*")
    json_path, plot_dir = tmp_path / "bench.json", tmp_path / "plots"
    done = subprocess.run([*SPACEGRID, "bench", "--quick", "--targets", "grid1,pg-on,redis-always",
                           "--duration-s", "1", "--warmup-s", "0.5", "--pg", PG_DSN, "--redis", REDIS_URL,
                           "--json", str(json_path), "--plot", str(plot_dir)],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(json_path.read_text())
    assert list(report["results"]) == ["grid1", "pg-on", "redis-always"]
    assert report["passed"] is True and report["failed"] == []
    for name, result in report["results"].items():
        assert result["ops"] > 0 and result["ops_per_s"] > 0, name
        assert result["check"]["ok"] is True and result["check"]["double_sales"] == 0, name
        assert result["check"]["seats_touched"] > 0, name
        assert result["cpu_us_per_op"]["total"] > 0, name
        assert result["latency_ms"]["read"]["count"] > 0 and result["latency_ms"]["write"]["count"] > 0, name
    durability = {name: r["target"]["durability"] for name, r in report["results"].items()}
    assert durability == {"grid1": "ack before fsync", "pg-on": "fsync before ack", "redis-always": "fsync before ack"}
    assert report["ratios"]["pg-on"]["ops_per_s"] == 1.0
    assert all(report["ratios"][name]["ops_per_s"] > 0 for name in ("grid1", "redis-always"))
    assert "ops/s ratio" in done.stdout and "grid1" in done.stdout
    for name in ("throughput.png", "latency.png"):
        width, height = _png_size(plot_dir / name)
        assert width > 100 and height > 100
    assert redis.Redis.from_url(REDIS_URL, decode_responses=True).config_get("append*") == before


def test_bench_refuses_a_target_whose_service_is_not_given(tmp_path: Path) -> None:
    """Naming pg-on without a PostgreSQL URL (none given, none in the environment) fails at once, saying why."""
    env = {k: v for k, v in os.environ.items() if k not in ("SPACEGRID_BENCH_PG", "SPACEGRID_BENCH_REDIS")}
    done = subprocess.run([*SPACEGRID, "bench", "--targets", "pg-on"], capture_output=True, text=True, timeout=60,
                          env=env, check=False)
    assert done.returncode != 0
    assert "no PostgreSQL URL" in done.stderr
