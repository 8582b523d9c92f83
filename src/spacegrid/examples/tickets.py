"""The ticket-sale example: events with seat maps, kept in one partition per event by affinity.

Keys: event `E17` in map `events`; its seats in map `seats` as `E17:A12@E17` (the part after '@' routes, so every
seat of an event shares the event's partition and a handler can change them together).
"""

from __future__ import annotations

from typing import Any

from spacegrid.space import EntryContext, PartitionView, Space

space = Space("tickets", partitions=64)
space.map("events")
space.map("seats")

SEATS_PER_EVENT_MAX = 2_000  # one create_event writes them all in one operation (limits.write_bytes_max)


def seat_key(event_id: str, seat: str) -> str:
    return f"{event_id}:{seat}@{event_id}"


@space.handler("events")
def create_event(ctx: EntryContext, event_id: str, args: Any) -> dict[str, Any]:
    """args: {"seats": N, "name": str}. Creates the event and N free seats S0..S(N-1); refuses to overwrite."""
    seats = int(args.get("seats", 0))
    if not 0 < seats <= SEATS_PER_EVENT_MAX:
        raise ValueError(f"seats must be 1..{SEATS_PER_EVENT_MAX}")
    if ctx.get(event_id) is not None:
        return {"created": False}
    ctx.put(event_id, {"name": args.get("name", event_id), "seats": seats, "sold": 0})
    for i in range(seats):
        ctx.put(seat_key(event_id, f"S{i}"), {"holder": None}, map="seats")
    return {"created": True, "seats": seats}


@space.handler("events")
def reserve(ctx: EntryContext, event_id: str, args: Any) -> dict[str, Any]:
    """args: {"seats": ["S1", ...], "holder": str}. All or nothing: reserves every seat or none."""
    event = ctx.get(event_id)
    if event is None:
        return {"ok": False, "reason": "no such event"}
    wanted = list(args["seats"])
    holder = str(args["holder"])
    for seat in wanted:
        state = ctx.get(seat_key(event_id, seat), map="seats")
        if state is None or state["holder"] is not None:
            return {"ok": False, "reason": f"seat {seat} is not free"}
    for seat in wanted:
        ctx.put(seat_key(event_id, seat), {"holder": holder}, map="seats")
    ctx.put(event_id, {**event, "sold": event["sold"] + len(wanted)})
    return {"ok": True, "seats": wanted}


@space.handler("events")
def release(ctx: EntryContext, event_id: str, args: Any) -> dict[str, Any]:
    """args: {"seats": [...], "holder": str}. Frees the seats this holder has."""
    event = ctx.get(event_id)
    if event is None:
        return {"ok": False, "released": 0}
    released = 0
    for seat in args["seats"]:
        key = seat_key(event_id, seat)
        state = ctx.get(key, map="seats")
        if state is not None and state["holder"] == args["holder"]:
            ctx.put(key, {"holder": None}, map="seats")
            released += 1
    if released:
        ctx.put(event_id, {**event, "sold": event["sold"] - released})
    return {"ok": True, "released": released}


@space.handler("events", read_only=True)
def availability(ctx: EntryContext, event_id: str, args: Any) -> dict[str, Any]:
    """How many seats are free: read-only, so it is answered from committed state at once."""
    event = ctx.get(event_id)
    if event is None:
        return {"exists": False}
    free = event["seats"] - event["sold"]
    return {"exists": True, "free": free, "sold": event["sold"], "seats": event["seats"]}


def _sum_sold(results: list[dict[str, int]]) -> dict[str, int]:
    return {"events": sum(r["events"] for r in results), "sold": sum(r["sold"] for r in results),
            "held_seats": sum(r["held_seats"] for r in results)}


@space.query(merge=_sum_sold)
def sales(view: PartitionView, args: Any) -> dict[str, int]:
    """Events, seats sold according to the events, and seats actually held, over the whole grid."""
    events = list(view.items("events"))
    held = sum(1 for _, seat in view.items("seats") if seat["holder"] is not None)
    return {"events": len(events), "sold": sum(e["sold"] for _, e in events), "held_seats": held}
