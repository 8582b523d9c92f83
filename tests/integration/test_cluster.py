"""A grid on a local 3-node NATS cluster: streams and KV with three replicas survive the loss of a node."""

from __future__ import annotations

import asyncio
from pathlib import Path

from spacegrid import Client, Limits
from spacegrid.launcher import LocalGrid
from spacegrid.testing.apps import APP
from spacegrid.testing.fixtures import TEST_PU_ARGS
from tests.integration.workload import FaultAt, History, check_history, write_load


def test_grid_keeps_working_when_a_nats_node_dies(tmp_path: Path) -> None:
    """SIGKILL of one of three NATS nodes under load: the writer finishes, nothing acknowledged is lost."""
    grid = LocalGrid(tmp_path / "grid", APP, pu_args=TEST_PU_ARGS, nats_cluster=3)
    try:
        grid.start(2)
        grid.wait_ready(90, members=2)
        history = History()
        victim = grid.nats_nodes[0]

        async def main() -> None:
            # A stream leader election takes 4-7 s here, and partitions recover after it: give calls 30 s.
            async with await Client.connect(grid.space, grid.url, Limits(call_deadline_s=30.0), access=grid.access) as client:
                kill = FaultAt(300, victim.kill)
                await write_load(client, history, ops=1600, workers=8, time_budget_s=90, on_progress=kill)
                assert kill.fired
                assert history.errors == [], history.errors[:5]
                await check_history(client, history, exact=True)

        asyncio.run(main())
        assert history.errors == []
        assert history.acked_puts.keys() == history.attempted_puts
        victim.start()
        grid.wait_ready(60, members=2)
    finally:
        grid.stop()
