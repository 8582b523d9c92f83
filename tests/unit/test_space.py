"""Unit tests of space definitions: names, maps, handlers, queries, keys and lookups."""

import pytest

from spacegrid.errors import DefinitionError, InvalidKey, UnknownHandler, UnknownMap
from spacegrid.space import KEY_CHARS_MAX, Space, check_key


def fresh() -> Space:
    space = Space("shop", partitions=16)
    space.map("orders")
    space.map("customers")
    return space


@pytest.mark.parametrize("name", ["a", "tickets", "A-b_9", "x" * 64])
def test_valid_space_names(name):
    """Names of a letter then up to 63 letters, digits, '-' or '_' are accepted."""
    assert Space(name).name == name


@pytest.mark.parametrize("name", ["", "1abc", "_a", "-a", "a b", "a.b", "a*", "a>", "x" * 65, "é"])
def test_invalid_space_names(name):
    """Space names that would break NATS subjects or bucket names raise DefinitionError."""
    with pytest.raises(DefinitionError):
        Space(name)


def test_space_name_with_trailing_newline_is_invalid():
    """A space name with a trailing newline raises DefinitionError."""
    with pytest.raises(DefinitionError):
        Space("tickets\n")


def test_map_name_with_trailing_newline_is_invalid():
    """A map name with a trailing newline raises DefinitionError."""
    with pytest.raises(DefinitionError):
        fresh().map("orders2\n")


@pytest.mark.parametrize("partitions", [0, -1, 4097])
def test_partition_count_bounds(partitions):
    """The partition count must be 1..4096."""
    with pytest.raises(DefinitionError):
        Space("s", partitions=partitions)
    assert Space("s", partitions=1).partitions == 1
    assert Space("s", partitions=4096).partitions == 4096


@pytest.mark.parametrize("name", ["", "9lives", "has space", "dot.ted", "x" * 65])
def test_invalid_map_names(name):
    """Map names follow the same rule as space names."""
    with pytest.raises(DefinitionError):
        fresh().map(name)


def test_duplicate_map_is_refused():
    """Declaring a map twice raises DefinitionError."""
    space = fresh()
    with pytest.raises(DefinitionError, match="orders"):
        space.map("orders")


def test_handler_registration_and_default_name():
    """A handler is registered under its function name by default, or the given name, with its map."""
    space = fresh()

    @space.handler("orders")
    def place(ctx, key, args):
        return 1

    @space.handler("customers", name="rename")
    def whatever(ctx, key, args):
        return 2

    assert (space.handler_def("place").map, space.handler_def("place").fn) == ("orders", place)
    assert (space.handler_def("rename").map, space.handler_def("rename").fn) == ("customers", whatever)
    assert place(None, "k", None) == 1  # the decorator returns the function unchanged


def test_duplicate_handler_is_refused():
    """Registering two handlers under one name raises DefinitionError, even on different maps."""
    space = fresh()

    @space.handler("orders")
    def place(ctx, key, args):
        return None

    with pytest.raises(DefinitionError, match="place"):
        @space.handler("customers", name="place")
        def other(ctx, key, args):
            return None

    assert (space.handler_def("place").map, space.handler_def("place").fn) == ("orders", place)


def test_handler_on_undeclared_map_is_refused():
    """A handler naming a map that isn't declared raises DefinitionError and is not registered."""
    space = fresh()
    with pytest.raises(DefinitionError, match="nope"):
        @space.handler("nope")
        def h(ctx, key, args):
            return None

    assert "h" not in space.handlers


def test_query_registration_and_duplicates():
    """Queries register with a default merge that returns the list; a duplicate name raises DefinitionError."""
    space = fresh()

    @space.query()
    def count(view, args):
        return 1

    definition = space.query_def("count")
    assert definition.fn is count
    assert definition.merge([1, 2]) == [1, 2]
    with pytest.raises(DefinitionError):
        @space.query(name="count", merge=sum)
        def other(view, args):
            return 2


@pytest.mark.parametrize("key", ["k", "x" * KEY_CHARS_MAX, "with@routing", "ünïcødé", " "])
def test_valid_keys(key):
    """Non-empty str keys up to KEY_CHARS_MAX characters are accepted."""
    check_key(key)
    fresh().partition_of("orders", key)


@pytest.mark.parametrize("key", ["", "x" * (KEY_CHARS_MAX + 1), None, 1, b"bytes", ["k"]])
def test_invalid_keys(key):
    """Empty, too long, or non-str keys raise InvalidKey, also when routed."""
    with pytest.raises(InvalidKey):
        check_key(key)
    with pytest.raises(InvalidKey):
        fresh().partition_of("orders", key)


def test_key_that_is_not_valid_unicode_is_invalid():
    """A key holding a lone surrogate (not encodable as UTF-8) raises InvalidKey, not UnicodeEncodeError."""
    with pytest.raises(InvalidKey):
        fresh().partition_of("orders", "bad\ud800key")


def test_key_chars_max_is_1024():
    """The key length bound is 1024 characters."""
    assert KEY_CHARS_MAX == 1024


def test_unknown_map_lists_the_known_maps():
    """Looking up an undeclared map raises UnknownMap naming the known maps."""
    space = fresh()
    with pytest.raises(UnknownMap) as caught:
        space.map_def("ordres")
    message = str(caught.value)
    assert "ordres" in message and "customers" in message and "orders" in message
    with pytest.raises(UnknownMap):
        space.partition_of("ordres", "k")


def test_unknown_handler_lists_the_known_handlers():
    """Looking up an unregistered handler or query raises UnknownHandler naming the known ones."""
    space = fresh()

    @space.handler("orders")
    def place(ctx, key, args):
        return None

    @space.query()
    def total(view, args):
        return 0

    with pytest.raises(UnknownHandler) as caught:
        space.handler_def("plcae")
    assert "plcae" in str(caught.value) and "place" in str(caught.value)
    with pytest.raises(UnknownHandler) as caught:
        space.query_def("totl")
    assert "totl" in str(caught.value) and "total" in str(caught.value)
