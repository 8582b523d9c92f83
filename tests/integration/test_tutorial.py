"""The tutorial (docs/tutorial.md) as a new user runs it: the FastAPI + PostgreSQL service, the same API on a real
grid, and the sold-out worker on the change feed, resumed after a crash without a duplicate or a miss."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import asyncpg
from fastapi.testclient import TestClient

from spacegrid import Client
from spacegrid.examples.tutorial import after, before, soldout
from spacegrid.examples.tutorial.space import space
from spacegrid.launcher import LocalGrid

TUTORIAL_APP = "spacegrid.examples.tutorial.space:space"


@contextmanager
def environment(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def exercise(http: TestClient) -> None:
    """What both services must do: create a show, book it in parallel without overselling, refuse the rest."""
    assert http.put("/shows/s1", json={"capacity": 10}).json() == {"created": True}
    assert http.put("/shows/s1", json={"capacity": 10}).json() == {"created": False}
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: http.post("/shows/s1/bookings",
                                                     json={"customer": f"c{i}", "seats": 3}).status_code, range(8)))
    assert statuses.count(200) == 3 and statuses.count(409) == 5
    assert http.get("/shows/s1").json() == {"capacity": 10, "sold": 9}
    assert http.post("/shows/s1/bookings", json={"customer": "z", "seats": 1}).json() == {"ok": True, "sold": 10}
    assert http.get("/shows/nope").status_code == 404
    assert http.post("/shows/s1/bookings", json={"customer": "", "seats": 1}).status_code == 422


def test_the_postgresql_service_books_without_overselling(pg_url: str) -> None:
    """Step 0: the FastAPI + PostgreSQL service creates shows and books seats, never more than the capacity."""
    with environment(DATABASE_URL=pg_url), TestClient(before.app) as http:
        exercise(http)


def test_the_grid_service_and_the_soldout_worker(grid_factory: Callable[..., LocalGrid], pg_url: str) -> None:
    """Steps 1-3: the same API on a grid of 2 PUs behaves the same; the sold-out worker records each sold-out show
    once, and after a crash resumes from its stored position without a duplicate or a miss."""
    grid = grid_factory(app=TUTORIAL_APP, pus=2)
    with environment(SPACEGRID_NATS=grid.url, SPACEGRID_DATA_DIR=str(grid.data_dir)), TestClient(after.app) as http:
        exercise(http)
        for show in ("s2", "s3"):
            http.put(f"/shows/{show}", json={"capacity": 2})
        http.post("/shows/s2/bookings", json={"customer": "a", "seats": 2})

    async def worker_runs() -> list[tuple[str, int]]:
        db = await asyncpg.connect(pg_url)
        try:
            async with await Client.connect(space, grid.url, data_dir=grid.data_dir) as client:
                # the first run crashes after 4 changes (s1 created, 4 bookings of s1 sold it out: 5 in all)
                assert await soldout.follow(client, db, changes_max=4) == 4
                assert await db.fetchval("SELECT count(*) FROM soldout_notices") == 0
                await client.execute("book", "s3", {"customer": "b", "seats": 2})
                # the restarted worker goes on after its stored position: s1's sell-out, s2 and s3 in order
                await soldout.follow(client, db, changes_max=5)
            rows = await db.fetch("SELECT show_id, capacity FROM soldout_notices ORDER BY show_id")
            return [(row["show_id"], row["capacity"]) for row in rows]
        finally:
            await db.close()

    assert asyncio.run(asyncio.wait_for(worker_runs(), 60)) == [("s1", 10), ("s2", 2), ("s3", 2)]
