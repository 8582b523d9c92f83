"""Step 0 of the tutorial: a show-booking service on FastAPI + PostgreSQL (asyncpg), one row per show.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test uvicorn spacegrid.examples.tutorial.before:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

SCHEMA = """CREATE TABLE IF NOT EXISTS shows (id text PRIMARY KEY, capacity int NOT NULL, sold int NOT NULL DEFAULT 0,
                                             CHECK (sold <= capacity))"""


class NewShow(BaseModel):
    capacity: int = Field(gt=0, le=100_000)


class Booking(BaseModel):
    customer: str = Field(min_length=1, max_length=100)
    seats: int = Field(gt=0, le=10)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=1, max_size=8)
    await app.state.pool.execute(SCHEMA)
    yield
    await app.state.pool.close()


app = FastAPI(title="shows (PostgreSQL)", lifespan=lifespan)


@app.put("/shows/{show_id}")
async def create_show(show_id: str, show: NewShow) -> dict[str, object]:
    created = await app.state.pool.fetchval(
        "INSERT INTO shows (id, capacity) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true", show_id, show.capacity)
    return {"created": bool(created)}


@app.post("/shows/{show_id}/bookings")
async def book(show_id: str, booking: Booking) -> dict[str, object]:
    sold = await app.state.pool.fetchval(
        "UPDATE shows SET sold = sold + $2 WHERE id = $1 AND sold + $2 <= capacity RETURNING sold", show_id,
        booking.seats)
    if sold is None:
        raise HTTPException(409, "no such show, or not enough seats left")
    return {"ok": True, "sold": sold}


@app.get("/shows/{show_id}")
async def show(show_id: str) -> dict[str, object]:
    row = await app.state.pool.fetchrow("SELECT capacity, sold FROM shows WHERE id = $1", show_id)
    if row is None:
        raise HTTPException(404, "no such show")
    return {"capacity": row["capacity"], "sold": row["sold"]}
