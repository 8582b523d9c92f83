"""Step 2 of the tutorial: the same API, served from the grid (the FastAPI app keeps no state; any number of them
can run). SPACEGRID_NATS: the grid's URL (`spacegrid up` prints it); SPACEGRID_DATA_DIR: its data dir (its
client credential and CA), or SPACEGRID_CREDS / SPACEGRID_TLS_CA.

    SPACEGRID_NATS=nats://127.0.0.1:PORT SPACEGRID_DATA_DIR=.tutorial uvicorn spacegrid.examples.tutorial.after:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException

from spacegrid import Client
from spacegrid.examples.tutorial.before import Booking, NewShow
from spacegrid.examples.tutorial.space import space


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with await Client.connect(space, os.environ["SPACEGRID_NATS"],
                                    data_dir=os.environ.get("SPACEGRID_DATA_DIR")) as client:
        app.state.grid = client
        yield


app = FastAPI(title="shows (spacegrid)", lifespan=lifespan)


@app.put("/shows/{show_id}")
async def create_show(show_id: str, show: NewShow) -> dict[str, object]:
    return dict(await app.state.grid.execute("create_show", show_id, {"capacity": show.capacity}))


@app.post("/shows/{show_id}/bookings")
async def book(show_id: str, booking: Booking) -> dict[str, object]:
    result = await app.state.grid.execute("book", show_id, {"customer": booking.customer, "seats": booking.seats})
    if not result["ok"]:
        raise HTTPException(409, result["reason"])
    return {"ok": True, "sold": result["sold"]}


@app.get("/shows/{show_id}")
async def show(show_id: str) -> dict[str, object]:
    found = await app.state.grid.get("shows", show_id)
    if found is None:
        raise HTTPException(404, "no such show")
    return {"capacity": found["capacity"], "sold": found["sold"]}
