"""The value types a space may allow (spacegrid.values): the ready-made ones (datetime, date, Decimal, set, frozenset,
tuple, UUID) under spacegrid's reserved codes 0..15, and a dataclass's or a pydantic model's under a user's code."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import sys
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Final

from spacegrid.errors import DecodeError, DefinitionError, EncodeError

CODES_BUILTIN: Final = range(0, 16)  # msgpack extension codes of spacegrid's ready-made types (8..15: kept free)
CODES_USER: Final = range(16, 128)  # a user's own types (msgpack keeps -128..-1 for itself: -1 is its timestamp)
ISO_CHARS_MAX: Final = 64  # an ISO 8601 date or datetime, as written by isoformat() (32 at most)


@dataclass(frozen=True)
class ValueType:
    """One allowed type: a value of exactly `cls` is written as msgpack extension `code` holding the msgpack of
    `encode(value)` (plain values, or other allowed types), and read back with `decode(payload)`, nothing else."""

    cls: type
    code: int
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]

    @property
    def name(self) -> str:
        return f"{self.cls.__module__}.{self.cls.__qualname__}"


# ---- the ready-made types ----------------------------------------------------------------------------------------


def _iso_text(payload: Any, what: str) -> str:
    if type(payload) is not str or len(payload) > ISO_CHARS_MAX:
        raise DecodeError(f"a {what} is an ISO 8601 str of at most {ISO_CHARS_MAX} characters, not "
                          f"{type(payload).__name__}")
    return payload


def _items(payload: Any, what: str) -> list[Any]:
    if type(payload) is not list:
        raise DecodeError(f"a {what} is written as a msgpack array, not {type(payload).__name__}")
    return payload


def _encode_datetime(value: datetime.datetime) -> str:
    if value.utcoffset() is None:
        raise EncodeError(f"a naive datetime ({value.isoformat()}) names no instant and is refused: give it a "
                          "timezone, e.g. datetime.now(timezone.utc) or value.replace(tzinfo=...)")
    return value.isoformat()


def _decode_datetime(payload: Any) -> datetime.datetime:
    value = datetime.datetime.fromisoformat(_iso_text(payload, "datetime"))
    if value.utcoffset() is None:
        raise DecodeError(f"a datetime must carry its UTC offset, not {payload!r}")
    return value


def _decode_date(payload: Any) -> datetime.date:
    return datetime.date.fromisoformat(_iso_text(payload, "date"))


def _decode_decimal(payload: Any) -> decimal.Decimal:
    if type(payload) is not str:
        raise DecodeError(f"a Decimal is written as a str, not {type(payload).__name__}")
    return decimal.Decimal(payload)


def _encode_uuid(value: uuid.UUID) -> bytes:
    return value.bytes


def _decode_uuid(payload: Any) -> uuid.UUID:
    if type(payload) is not bytes or len(payload) != 16:
        raise DecodeError("a UUID is written as 16 bytes")
    return uuid.UUID(bytes=payload)


def _members(value: set[Any] | frozenset[Any]) -> list[Any]:
    """A set's members, sorted where they sort (the same set is then written as the same bytes)."""
    try:
        return sorted(value)
    except TypeError:
        return list(value)


DATETIME: Final = ValueType(datetime.datetime, 1, _encode_datetime, _decode_datetime)  # tz-aware only; the offset
# comes back as a fixed timezone(timedelta) (a zoneinfo's name is not kept), the instant and the offset exactly
DATE: Final = ValueType(datetime.date, 2, datetime.date.isoformat, _decode_date)
DECIMAL: Final = ValueType(decimal.Decimal, 3, str, _decode_decimal)
SET: Final = ValueType(set, 4, _members, lambda payload: set(_items(payload, "set")))
FROZENSET: Final = ValueType(frozenset, 5, _members, lambda payload: frozenset(_items(payload, "frozenset")))
TUPLE: Final = ValueType(tuple, 6, list, lambda payload: tuple(_items(payload, "tuple")))
UUID: Final = ValueType(uuid.UUID, 7, _encode_uuid, _decode_uuid)

STANDARD: Final = (DATETIME, DATE, DECIMAL, SET, FROZENSET, TUPLE, UUID)
BUILTINS: Final = {value_type.cls: value_type for value_type in STANDARD}
BUILTINS_BY_CODE: Final = {value_type.code: value_type for value_type in STANDARD}


# ---- a user's records ----------------------------------------------------------------------------------------------


def is_pydantic(cls: type) -> bool:
    """Whether cls is a pydantic model (without importing pydantic: only if the application did)."""
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and isinstance(cls, type) and issubclass(cls, pydantic.BaseModel)


def for_dataclass(cls: type, code: int) -> ValueType:
    """A dataclass written as a map of its init fields (their values typed or plain, each allowed on the space),
    read back with cls(**fields): a field the class does not have is refused."""
    names = tuple(f.name for f in dataclasses.fields(cls) if f.init)
    known = frozenset(names)

    def encode(value: Any) -> dict[str, Any]:
        return {name: getattr(value, name) for name in names}

    def decode(payload: Any) -> Any:
        if type(payload) is not dict:
            raise DecodeError(f"a {cls.__qualname__} is written as a map of its fields, not {type(payload).__name__}")
        unknown = [str(name) for name in payload if name not in known]
        if unknown:
            raise DecodeError(f"{cls.__qualname__} has no init field {', '.join(sorted(unknown)[:5])!s}")
        return cls(**payload)

    return ValueType(cls, code, encode, decode)


def for_pydantic(cls: type, code: int) -> ValueType:
    """A pydantic model written as model_dump(mode="python") (the types of its fields allowed on the space too),
    read back with model_validate (its validators run)."""

    def encode(value: Any) -> Any:
        return value.model_dump(mode="python", round_trip=True)

    def decode(payload: Any) -> Any:
        if type(payload) is not dict:
            raise DecodeError(f"a {cls.__qualname__} is written as a map of its fields, not {type(payload).__name__}")
        return cls.model_validate(payload)  # type: ignore[attr-defined]

    return ValueType(cls, code, encode, decode)


def is_record(cls: type) -> bool:
    """A class that needs only a code to be allowed: a dataclass or a pydantic model."""
    return dataclasses.is_dataclass(cls) or is_pydantic(cls)


def resolve(cls: type, code: int | None, encode: Callable[[Any], Any] | None,
            decode: Callable[[Any], Any] | None) -> ValueType:
    """The ValueType of register_type(cls, code, encode, decode), or DefinitionError saying what is missing."""
    if not isinstance(cls, type):
        raise DefinitionError(f"register a class, not {cls!r}")
    name = f"{cls.__module__}.{cls.__qualname__}"
    if (encode is None) != (decode is None):
        raise DefinitionError(f"{name}: give both encode= and decode=, or neither")
    builtin = BUILTINS.get(cls)
    if builtin is not None and encode is None:
        if code is not None and code != builtin.code:
            raise DefinitionError(f"{name} is ready-made under code {builtin.code}: register it without a code")
        return builtin
    if code is None:
        raise DefinitionError(f"{name} needs a code of its own: register_type({cls.__qualname__}, code=N) with N in "
                              f"{CODES_USER.start}..{CODES_USER.stop - 1}, the same on every client and PU")
    if type(code) is not int or code not in CODES_USER:
        raise DefinitionError(f"{name}: a code is an int in {CODES_USER.start}..{CODES_USER.stop - 1} "
                              f"({CODES_BUILTIN.start}..{CODES_BUILTIN.stop - 1} are spacegrid's), not {code!r}")
    if encode is not None and decode is not None:
        return ValueType(cls, code, encode, decode)
    if dataclasses.is_dataclass(cls):
        return for_dataclass(cls, code)
    if is_pydantic(cls):
        return for_pydantic(cls, code)
    raise DefinitionError(f"{name} is neither a dataclass nor a pydantic model: give encode= (value -> plain or "
                          "allowed values) and decode= (the reverse)")
