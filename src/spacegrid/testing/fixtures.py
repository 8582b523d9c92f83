"""Pytest fixtures users can reuse: a real nats-server on a free port that always shuts down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from spacegrid.engine.server import NatsServerProcess, NatsServerSpec


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServerProcess]:
    """A JetStream-enabled nats-server on a free loopback port, its store under tmp_path; stopped after the test."""
    server = NatsServerProcess(NatsServerSpec(store_dir=tmp_path / "nats", server_name="test"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServerProcess) -> Iterator[str]:
    """The client URL of the `nats_server` fixture, e.g. "nats://127.0.0.1:40123"."""
    yield nats_server.url
