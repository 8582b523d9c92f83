"""A space's codec for values: msgpack plus the allow-list of types registered on the space (Space.values).

A value of a registered type is written as a msgpack extension value of the type's code, holding the msgpack of what
the type's `encode` returns; it is read back by looking the code up in this registry and calling that type's
`decode`, and nothing else: no pickle, no marshal, no class looked up by a name from the wire. A value of a type not
registered is refused on encode (EncodeError naming it and how to register it); a code not registered is refused on
decode (DecodeError). Every extension payload is bounded (limits.WIRE_TYPED_*), on encode and decode alike. What is
ready-made, and how a dataclass or a pydantic model is written: spacegrid.valuetypes; the guide: docs/typed-values.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable

import msgpack

from spacegrid import codec
from spacegrid.errors import DecodeError, DefinitionError, EncodeError, PayloadTooLarge, SpacegridError
from spacegrid.limits import WIRE_TYPED_EXT_BYTES_MAX, WIRE_TYPED_NESTING_MAX, WIRE_VALUE_DEPTH_MAX
from spacegrid.valuetypes import BUILTINS, BUILTINS_BY_CODE, CODES_USER, ValueType, is_record, resolve

#: msgpack's own types: never registered (a tuple is, to come back as a tuple: valuetypes.TUPLE)
PLAIN_TYPES = (type(None), bool, int, float, str, bytes, bytearray, memoryview, list, dict)
#: arrays and maps an item of a message may nest when it is decoded again, its extension values one by one
#: (Values.decode_items): a value's WIRE_VALUE_DEPTH_MAX and the envelopes around it (request, reply, entry)
ITEM_DEPTH_MAX = WIRE_VALUE_DEPTH_MAX + 4
_NOT_PLAIN = object()


@dataclass(slots=True)
class Undecodable:
    """An item of a message (a request, a reply) holding a value this side can not decode (an extension type it
    did not register, or one its decode refused): the item as decoded with codec.keep_ext, and why."""

    raw: Any
    error: DecodeError


class Values:
    """Encode and decode a space's values: `encode(obj) -> bytes`, `decode(data, size_max_bytes) -> obj`. Types
    are allowed by `register` (Space(types=[...]) or space.register_type(...)), on every client and PU alike."""

    def __init__(self, space: str | None = None, types: Iterable[ValueType | type] = ()) -> None:
        self.space = space
        self._by_type: dict[type, ValueType] = {}
        self._by_code: dict[int, ValueType] = {}
        self._default_top = partial(self._default, depth=1)
        self._ext_top = partial(self._ext, depth=1)
        for item in types:
            if isinstance(item, ValueType):
                self.add(item)
            else:
                self.register(item)

    # ---- the allow-list ----------------------------------------------------------------------------------------

    def register(self, cls: type, code: int | None = None, encode: Callable[[Any], Any] | None = None,
                 decode: Callable[[Any], Any] | None = None) -> ValueType:
        """Allow values of exactly `cls`: a ready-made type by its class alone (datetime, date, Decimal, set,
        frozenset, tuple, UUID); a dataclass or a pydantic model with a `code` in 16..127; any other class with a
        code and its `encode(value) -> plain or allowed values` and `decode(that) -> value`."""
        return self.add(resolve(cls, code, encode, decode))

    def add(self, value_type: ValueType) -> ValueType:
        """Allow a ValueType (e.g. spacegrid.valuetypes.DATETIME); the same one twice is allowed once."""
        if value_type.cls in PLAIN_TYPES:
            raise DefinitionError(f"{value_type.name} is one of msgpack's own types: it needs no registration")
        if not (value_type.code in CODES_USER or BUILTINS_BY_CODE.get(value_type.code) is value_type):
            raise DefinitionError(f"{value_type.name}: code {value_type.code} is not a user's code "
                                  f"({CODES_USER.start}..{CODES_USER.stop - 1})")
        taken = self._by_code.get(value_type.code)
        if taken is value_type:
            return value_type
        if taken is not None:
            raise DefinitionError(f"code {value_type.code} is taken by {taken.name}, not free for {value_type.name}")
        if value_type.cls in self._by_type:
            raise DefinitionError(f"{value_type.name} is registered already, under code "
                                  f"{self._by_type[value_type.cls].code}")
        self._by_type[value_type.cls] = value_type
        self._by_code[value_type.code] = value_type
        return value_type

    def types(self) -> tuple[ValueType, ...]:
        """The registered types, by code."""
        return tuple(self._by_code[code] for code in sorted(self._by_code))

    # ---- encoding ------------------------------------------------------------------------------------------------

    def encode(self, obj: Any) -> bytes:
        """obj as msgpack: plain values as codec.encode writes them (a tuple or a subclass of a plain type as its
        plain type, unless registered), registered types as their extension values; anything else: EncodeError."""
        try:
            return msgpack.packb(obj, use_bin_type=True, datetime=False, strict_types=True, default=self._default_top)
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"value is not msgpack-encodable ({exc})") from exc

    def encode_bounded(self, obj: Any, size_max_bytes: int, what: str) -> bytes:
        """Encode obj, refusing it with PayloadTooLarge past size_max_bytes."""
        data = self.encode(obj)
        if len(data) > size_max_bytes:
            raise PayloadTooLarge(f"{what} of {len(data)} bytes exceeds the limit of {size_max_bytes} bytes")
        return data

    def _default(self, obj: Any, depth: int) -> Any:
        """msgpack's hook for what it does not write itself (strict_types: a tuple or a subclass too)."""
        value_type = self._by_type.get(type(obj))
        if value_type is None:
            plain = _plain(obj)
            if plain is _NOT_PLAIN:
                raise self._unregistered(obj)
            return plain
        if depth > WIRE_TYPED_NESTING_MAX:
            raise EncodeError(f"typed values nest more than {WIRE_TYPED_NESTING_MAX} deep "
                              "(limits.WIRE_TYPED_NESTING_MAX)")
        try:
            payload = value_type.encode(obj)
        except SpacegridError:
            raise
        except Exception as exc:
            raise EncodeError(f"the encode of {value_type.name} raised {type(exc).__name__}: {exc}") from exc
        try:
            codec.check_depth(payload, WIRE_VALUE_DEPTH_MAX, f"a {value_type.name} value",
                              "limits.WIRE_VALUE_DEPTH_MAX")
        except DecodeError as exc:
            raise EncodeError(str(exc)) from None
        data = msgpack.packb(payload, use_bin_type=True, datetime=False, strict_types=True,
                             default=partial(self._default, depth=depth + 1))
        if len(data) > WIRE_TYPED_EXT_BYTES_MAX:
            raise PayloadTooLarge(f"a {value_type.name} value of {len(data)} bytes exceeds WIRE_TYPED_EXT_BYTES_MAX="
                                  f"{WIRE_TYPED_EXT_BYTES_MAX} (limits.WIRE_TYPED_EXT_BYTES_MAX)")
        return msgpack.ExtType(value_type.code, data)

    def _unregistered(self, obj: Any) -> EncodeError:
        cls = type(obj)
        name, short, where = f"{cls.__module__}.{cls.__qualname__}", cls.__qualname__, self._where()
        if cls in BUILTINS:
            spelled = short if cls.__module__ == "builtins" else name
            how = f"Space({self.space or 'NAME'!r}, types=[{spelled}, ...]) or space.register_type({spelled})"
        elif is_record(cls):
            how = f"space.register_type({short}, code=N), N in {CODES_USER.start}..{CODES_USER.stop - 1}"
        else:
            how = (f"space.register_type({short}, code=N, encode=..., decode=...), N in "
                   f"{CODES_USER.start}..{CODES_USER.stop - 1}")
        base = next((t.__qualname__ for t in self._by_type if isinstance(obj, t)), None)
        also = f" (it subclasses the registered {base}: a subclass is registered on its own)" if base else ""
        return EncodeError(f"a value of type {name} is not registered on {where}{also}, and msgpack has no type of "
                           f"its own for it: register it with {how} "
                           "on every client and PU (docs/typed-values.md), or use dict, list, str, int, float, bool, "
                           "bytes or None")

    def _where(self) -> str:
        return f"space {self.space!r}" if self.space else "this codec"

    # ---- decoding ------------------------------------------------------------------------------------------------

    def decode(self, data: bytes, size_max_bytes: int, **bounds: int) -> Any:
        """Decode one msgpack document (codec.decode, its bounds), registered extension values as their types,
        each at most limits.WIRE_TYPED_EXT_BYTES_MAX; an unregistered code or a payload its type's decode refuses
        raises DecodeError."""
        bounds.setdefault("ext_bytes_max", WIRE_TYPED_EXT_BYTES_MAX)
        return codec.decode(data, size_max_bytes, ext_hook=self._ext_top, **bounds)

    def _ext(self, code: int, data: bytes, depth: int) -> Any:
        """msgpack's ext_hook: the registered type of `code` decodes its payload, or DecodeError."""
        value_type = self._by_code.get(code)
        if value_type is None:
            known = ", ".join(f"{t.code} {t.name}" for t in self.types()) or "none"
            raise DecodeError(f"msgpack extension type {code} is not registered on {self._where()} (registered: "
                              f"{known}): every client and PU must register the same types")
        if depth > WIRE_TYPED_NESTING_MAX:
            raise DecodeError(f"typed values nest more than {WIRE_TYPED_NESTING_MAX} deep "
                              "(limits.WIRE_TYPED_NESTING_MAX)")
        try:
            payload = codec.decode(data, len(data), ext_bytes_max=WIRE_TYPED_EXT_BYTES_MAX,
                                   depth_max=WIRE_VALUE_DEPTH_MAX, ext_hook=partial(self._ext, depth=depth + 1))
        except DecodeError as exc:
            raise DecodeError(f"in a {value_type.name} value: {exc}") from None
        try:
            return value_type.decode(payload)
        except SpacegridError:
            raise
        except Exception as exc:
            raise DecodeError(f"a {value_type.name} value (extension type {code}) is undecodable: "
                              f"{type(exc).__name__}: {exc}") from exc

    def revive(self, obj: Any, depth_max: int = ITEM_DEPTH_MAX) -> Any:
        """obj as decoded with codec.keep_ext, its extension values decoded as registered types: DecodeError for a
        code not registered, or past depth_max nested arrays and maps."""
        kind = type(obj)
        if kind is msgpack.ExtType:
            return self._ext_top(obj.code, obj.data)
        if kind is not list and kind is not dict:
            return obj
        if depth_max <= 0:
            raise DecodeError(f"arrays and maps nest deeper than {ITEM_DEPTH_MAX} (values.ITEM_DEPTH_MAX)")
        if kind is list:
            return [self.revive(item, depth_max - 1) for item in obj]
        try:
            return {self.revive(key, depth_max - 1): self.revive(item, depth_max - 1) for key, item in obj.items()}
        except TypeError as exc:  # a typed key that does not hash
            raise DecodeError(f"a map key must be hashable ({exc})") from None

    def decode_items(self, data: bytes, size_max_bytes: int) -> Any:
        """A message that is an array of items (requests, replies), decoded as decode does; where that fails on an
        extension value, each item that holds one this side can not decode becomes Undecodable (the others are kept,
        so that one value of a type this side did not register fails only its own request). Any other failure
        raises as decode's."""
        try:
            return self.decode(data, size_max_bytes)
        except DecodeError as exc:
            failure = exc
        try:
            items = codec.decode_opaque(data, size_max_bytes)
        except SpacegridError:
            items = None
        if type(items) is not list:
            raise failure
        return [self._revive_item(item) for item in items]

    def _revive_item(self, item: Any) -> Any:
        try:
            return self.revive(item)
        except DecodeError as exc:
            return Undecodable(item, exc)


def _plain(obj: Any) -> Any:
    """An unregistered tuple, or a subclass of a plain type (IntEnum, OrderedDict, a namedtuple...), as the plain
    value msgpack would write without strict_types; _NOT_PLAIN for anything else."""
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, int):
        return int.__int__(obj)
    if isinstance(obj, float):
        return float.__float__(obj)
    if isinstance(obj, str):
        return str.__str__(obj)
    if isinstance(obj, bytes):
        return bytes.__bytes__(obj)
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, list):
        return list(obj)
    return _NOT_PLAIN
