"""Step 1 of the tutorial: the shows as a Space, the booking rule as a handler that runs next to the data.

    spacegrid up --app spacegrid.examples.tutorial.space:space --data-dir .tutorial
"""

from __future__ import annotations

from typing import Any

from spacegrid import EntryContext, Space

space = Space("shows", partitions=32)
space.map("shows")  # key: the show id; value {"capacity": int, "sold": int, "bookings": {customer: seats}}


@space.handler("shows")
def create_show(ctx: EntryContext, show_id: str, args: Any) -> dict[str, Any]:
    """args {"capacity": N}: creates the show unless it exists."""
    capacity = int(args["capacity"])
    if not 0 < capacity <= 100_000:
        raise ValueError("capacity must be 1..100000")
    if ctx.get(show_id) is not None:
        return {"created": False}
    ctx.put(show_id, {"capacity": capacity, "sold": 0, "bookings": {}})
    return {"created": True}


@space.handler("shows")
def book(ctx: EntryContext, show_id: str, args: Any) -> dict[str, Any]:
    """args {"customer": str, "seats": n}: books the seats if that many are left, atomically with every other
    operation on the show (its partition's operations run one at a time on its owner)."""
    show = ctx.get(show_id)
    seats = int(args["seats"])
    if show is None or show["sold"] + seats > show["capacity"]:
        return {"ok": False, "reason": "no such show, or not enough seats left"}
    bookings = dict(show["bookings"])
    bookings[args["customer"]] = bookings.get(args["customer"], 0) + seats
    ctx.put(show_id, {**show, "sold": show["sold"] + seats, "bookings": bookings})
    return {"ok": True, "sold": show["sold"] + seats}
