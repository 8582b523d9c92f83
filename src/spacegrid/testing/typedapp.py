"""A space of typed values for tests (docs/typed-values.md): the ready-made types, a dataclass and handlers that take,
store and return them."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from spacegrid import EntryContext, PartitionView, Space
from spacegrid.valuetypes import STANDARD

APP = "spacegrid.testing.typedapp:space"
SEAT_CODE = 16


@dataclass(frozen=True)
class Seat:
    """A seat: a frozen dataclass, so that a set may hold it."""

    row: str
    number: int


@dataclass
class Booking:
    """A booking: a dataclass whose fields hold other typed values."""

    holder: str
    at: datetime.datetime
    price: Decimal
    seats: frozenset[Seat]
    tags: set[str]
    span: tuple[datetime.date, datetime.date]


class Unregistered:
    """A class no space registers: a value of it is refused."""


def define(extra: tuple[tuple[type, int], ...] = ()) -> Space:
    """The test space; `extra` (class, code) pairs are registered besides, for a client that knows more types
    than the PUs do."""
    space = Space("typedapp", partitions=8, types=STANDARD)
    space.register_type(Seat, code=SEAT_CODE)
    space.register_type(Booking, code=SEAT_CODE + 1)
    for cls, code in extra:
        space.register_type(cls, code=code)
    space.map("bookings")
    space.map("kv")

    @space.handler("bookings")
    def book(ctx: EntryContext, key: str, args: Booking) -> dict[str, Any]:
        """Store the Booking given (it must arrive typed), and answer what the PU saw, typed."""
        assert type(args) is Booking and type(args.at) is datetime.datetime, type(args)
        previous = ctx.get(key)
        ctx.put(key, args)
        stored = ctx.get(key)  # read-your-writes: typed too
        assert stored == args
        return {"previous": previous, "total": args.price * len(args.seats), "seats": args.seats,
                "span": args.span, "seen": sorted({type(v).__name__ for v in vars(args).values()})}

    @space.handler("bookings", read_only=True)
    def describe(ctx: EntryContext, key: str, args: Any) -> tuple[str, Any] | None:
        """The stored value's type name and the value itself, or None."""
        value = ctx.get(key)
        return None if value is None else (type(value).__name__, value)

    @space.handler("kv")
    def echo(ctx: EntryContext, key: str, args: Any) -> Any:
        """Store args under key and return them as the PU decoded them."""
        ctx.put(key, args)
        return args

    @space.handler("kv")
    def untyped(ctx: EntryContext, key: str, args: Any) -> Any:
        """Return a value of a type the space did not register."""
        return Unregistered()

    @space.handler("kv", read_only=True)
    def untyped_read(ctx: EntryContext, key: str, args: Any) -> Any:
        """Return a value of a type the space did not register, from a read-only handler (answered at once)."""
        return Unregistered()

    @space.query(merge=lambda results: sorted(total for part in results for total in part))
    def totals(view: PartitionView, args: Any) -> list[Decimal]:
        """The price of every booking held, a Decimal each."""
        return [booking.price for _, booking in view.items("bookings")]

    return space


space = define()
