"""The ticket invariant: the client's history of acknowledged reserves and releases against the server's final
state (no seat sold twice, every seat's holder and every event's `sold` as the ledger says)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Final

SAMPLES_MAX: Final = 5  # violations quoted in a check's result
Seat = tuple[int, int]  # (event, seat)


@dataclass
class History:
    """What the client saw acknowledged: reserves (holder -> event, seats, ack time), releases (holder -> event,
    seats, send time, seats freed) and operations whose outcome is unknown (an error: they may have happened)."""

    reserved: dict[str, tuple[int, tuple[int, ...], float]] = field(default_factory=dict)
    released: dict[str, tuple[int, tuple[int, ...], float, int]] = field(default_factory=dict)
    uncertain: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Expected:
    """What the history implies for the final state."""

    holders: dict[Seat, str]  # seats held at the end, and by whom
    touched: set[Seat]  # every seat some acknowledged reserve took
    uncertain: set[Seat]  # seats an operation of unknown outcome may have changed
    overlaps: list[str]  # seats the history shows held by two holders at once: a double sale
    sold: dict[int, int]  # `sold` per event that has held seats


@dataclass(frozen=True)
class ServerState:
    """What a target holds at the end: the holder of (at least) every touched seat (None: free), `sold` of every
    event, and target-specific checks (names ending in `_ok` must be true)."""

    holders: dict[Seat, str | None]
    sold: dict[int, int]
    extra: dict[str, Any] = field(default_factory=dict)


def replay(history: History) -> Expected:
    """Each seat's holding intervals, from an acknowledged reserve until its release was sent; two that overlap mean
    a seat was acknowledged to a holder while another still held it."""
    intervals: dict[Seat, list[tuple[float, float, str]]] = {}
    for holder, (event, seats, t_ack) in history.reserved.items():
        release = history.released.get(holder)
        end = release[2] if release is not None else math.inf
        for seat in seats:
            intervals.setdefault((event, seat), []).append((t_ack, end, holder))
    uncertain = {(event, seat) for event, seats in history.uncertain.values() for seat in seats}
    holders: dict[Seat, str] = {}
    overlaps: list[str] = []
    for key, spans in intervals.items():
        if key in uncertain:  # an operation of unknown outcome touched it: neither overlaps nor holder can be known
            continue
        spans.sort()
        for (_, end_a, holder_a), (start_b, _, holder_b) in pairwise(spans):
            if start_b < end_a:
                overlaps.append(f"event {key[0]} seat {key[1]}: sold to {holder_a} and {holder_b}")
        if spans[-1][1] == math.inf:
            holders[key] = spans[-1][2]
    sold: dict[int, int] = {}
    for event, _ in holders:
        sold[event] = sold.get(event, 0) + 1
    return Expected(holders, set(intervals), uncertain, overlaps, sold)


def check(expected: Expected, state: ServerState) -> dict[str, Any]:
    """The verdict (`ok`) with counts and a few samples of what is wrong."""
    seat_mismatches = [f"event {key[0]} seat {key[1]}: holder {holder!r}, the history says "
                       f"{expected.holders.get(key)!r}"
                       for key, holder in state.holders.items()
                       if key not in expected.uncertain and holder != expected.holders.get(key)]
    seat_mismatches += [f"event {key[0]} seat {key[1]}: not read back, the history says {holder!r}"
                        for key, holder in expected.holders.items() if key not in state.holders]
    uncertain_events = {event for event, _ in expected.uncertain}
    sold_mismatches = [f"event {event}: sold {sold}, the history says {expected.sold.get(event, 0)}"
                       for event, sold in state.sold.items()
                       if event not in uncertain_events and sold != expected.sold.get(event, 0)]
    failed_extra = [name for name, value in state.extra.items() if name.endswith("_ok") and not value]
    return {
        "ok": not (expected.overlaps or seat_mismatches or sold_mismatches or failed_extra),
        "seats_touched": len(expected.touched),
        "seats_held_expected": len(expected.holders),
        "double_sales": len(expected.overlaps),
        "seat_mismatches": len(seat_mismatches),
        "sold_mismatches": len(sold_mismatches),
        "uncertain_seats": len(expected.uncertain),
        "failed_checks": failed_extra,
        "samples": (expected.overlaps + seat_mismatches + sold_mismatches)[:SAMPLES_MAX],
        **state.extra,
    }
