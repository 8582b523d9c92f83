"""Integration tests of the local nats-server runner: JetStream fences work on it and it never outlives stop()."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import nats
import pytest
from nats.js.errors import BadRequestError

from spacegrid.engine.server import NatsServerProcess, NatsServerSpec
from spacegrid.errors import ConfigError

WRONG_LAST_SEQUENCE_ERR_CODE = 10071
FENCE = "Nats-Expected-Last-Subject-Sequence"


async def _fenced_appends(url: str) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=5.0)
        await js.add_stream(name="FENCE", subjects=["fence.>"])
        first = await js.publish("fence.p0", b"a", headers={FENCE: "0"})
        second = await js.publish("fence.p0", b"b", headers={FENCE: str(first.seq)})
        assert second.seq == first.seq + 1

        for stale in ("0", str(first.seq)):
            with pytest.raises(BadRequestError) as rejected:
                await js.publish("fence.p0", b"stale", headers={FENCE: stale})
            assert rejected.value.err_code == WRONG_LAST_SEQUENCE_ERR_CODE

        last = await js.get_last_msg("FENCE", "fence.p0")
        assert (last.seq, last.data) == (second.seq, b"b")
    finally:
        await nc.close()


def test_fenced_publish_with_wrong_last_subject_sequence_is_rejected(nats_url: str) -> None:
    """A JetStream publish fenced on a stale Nats-Expected-Last-Subject-Sequence is rejected with err_code 10071."""
    asyncio.run(_fenced_appends(nats_url))


def test_stop_leaves_no_process_behind(nats_server: NatsServerProcess) -> None:
    """stop() terminates and reaps the nats-server, so its PID no longer exists."""
    pid = nats_server.pid
    os.kill(pid, 0)
    nats_server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_stop_terminates_a_paused_server(nats_server: NatsServerProcess) -> None:
    """stop() also ends a server frozen by pause(), which could not act on SIGTERM while stopped."""
    pid = nats_server.pid
    nats_server.pause()
    nats_server.stop(timeout_s=5.0)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_server_that_exits_at_start_up_raises_config_error_with_its_log(tmp_path: Path) -> None:
    """start() on a port already taken raises ConfigError quoting the server's log, and leaves no process."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = NatsServerProcess(NatsServerSpec(store_dir=tmp_path, port=taken.getsockname()[1]))
        with pytest.raises(ConfigError, match="address already in use"):
            server.start(timeout_s=10.0)
    assert not server.is_running()
