"""Step 3 of the tutorial: react to changes. A worker follows the shows' change feed and records each show that
sells out in PostgreSQL, in one transaction with the feed position it has reached: after a crash it resumes from
that position, so each show gets exactly one notice (exactly-once in effect).

    SPACEGRID_NATS=... SPACEGRID_DATA_DIR=.tutorial DATABASE_URL=postgresql://... python -m spacegrid.examples.tutorial.soldout
"""

from __future__ import annotations

import asyncio
import os

import asyncpg

from spacegrid import Client
from spacegrid.examples.tutorial.space import space

SCHEMA = """
CREATE TABLE IF NOT EXISTS soldout_notices (show_id text PRIMARY KEY, capacity int NOT NULL);
CREATE TABLE IF NOT EXISTS feed_positions (feed text PRIMARY KEY, position text NOT NULL);
"""


async def follow(client: Client, db: asyncpg.Connection, changes_max: int | None = None) -> int:
    """Record sold-out shows from the feed, resuming after the stored position; returns the changes read (stops
    after changes_max, for tests)."""
    await db.execute(SCHEMA)
    position = await db.fetchval("SELECT position FROM feed_positions WHERE feed = 'soldout'")
    read = 0
    async for change in client.listen("shows", from_=position or "earliest"):
        async with db.transaction():
            if change.kind == "put" and change.value["sold"] == change.value["capacity"]:
                await db.execute("INSERT INTO soldout_notices VALUES ($1, $2) ON CONFLICT DO NOTHING", change.key,
                                 change.value["capacity"])
            await db.execute("INSERT INTO feed_positions VALUES ('soldout', $1) ON CONFLICT (feed) DO UPDATE "
                             "SET position = excluded.position", str(change.position))
        read += 1
        if changes_max is not None and read >= changes_max:
            break
    return read


async def main() -> None:
    db = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        async with await Client.connect(space, os.environ["SPACEGRID_NATS"],
                                        data_dir=os.environ.get("SPACEGRID_DATA_DIR")) as client:
            await follow(client, db)
    finally:
        await db.close()


if __name__ == "__main__":
    asyncio.run(main())
