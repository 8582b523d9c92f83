"""Unit tests of the error taxonomy: the three bases a caller acts on, and the wire round-trip of every class."""

import pytest

from spacegrid import codec, errors, protocol
from spacegrid.errors import (
    CallerError,
    NotApplied,
    OutcomeUnknown,
    SpacegridError,
    error_from_wire,
    error_to_wire,
)


def error_classes() -> list[type[SpacegridError]]:
    """Every class of spacegrid.errors."""
    found, todo = [], [SpacegridError]
    while todo:
        cls = todo.pop()
        if cls.__module__ == "spacegrid.errors" and cls not in found:
            found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def example(cls: type[SpacegridError]) -> SpacegridError:
    """An instance with every field set that the class carries."""
    if issubclass(cls, errors.VersionConflict):
        return cls("stale", 17)
    if issubclass(cls, errors.HandlerError):
        return cls("handler 'h' raised ValueError: bad seat", "ValueError")
    return cls(f"a {cls.__name__}")


EXPECTED_BASES = {
    NotApplied: {"RoutingError", "NotOwner", "PartitionUnavailable", "Fenced", "FenceBusy", "Overloaded",
                 "GridUnavailable", "LogUnavailable", "LogMissing"},
    OutcomeUnknown: {"CommitUnknown", "GridTimeout", "AttemptTimeout"},
    CallerError: {"RequestError", "UnknownMap", "UnknownHandler", "InvalidKey", "EncodeError", "DecodeError",
                  "PayloadTooLarge", "WrongPartition", "VersionConflict", "HandlerError", "HandlerTimeout",
                  "Unauthorized", "Forbidden", "NotFound"},  # the last three: the HTTP gateway's own
}


@pytest.mark.parametrize("base", list(EXPECTED_BASES), ids=lambda cls: cls.__name__)
def test_each_base_holds_exactly_the_intended_classes(base):
    """The classes under NotApplied, OutcomeUnknown and CallerError are exactly the ones the taxonomy names."""
    under = {cls.__name__ for cls in error_classes() if issubclass(cls, base) and cls is not base}
    assert under == EXPECTED_BASES[base]


def test_no_class_is_under_two_bases():
    """A class says one thing: not applied, outcome unknown, or the caller's fault (or none of them)."""
    for cls in error_classes():
        assert sum(issubclass(cls, base) for base in EXPECTED_BASES) <= 1, cls


@pytest.mark.parametrize("cls", error_classes(), ids=lambda cls: cls.__name__)
def test_retryable_follows_the_base(cls):
    """retryable is True exactly for NotApplied and OutcomeUnknown classes."""
    assert example(cls).retryable is issubclass(cls, NotApplied | OutcomeUnknown)


@pytest.mark.parametrize("cls", error_classes(), ids=lambda cls: cls.__name__)
def test_every_class_round_trips_over_the_wire(cls):
    """An error reply rebuilds the same class, message, current_version and exc_type on the client's side."""
    sent = example(cls)
    req_id, code, payload = codec.decode(protocol.error_reply(9, sent), 1 << 16)
    rebuilt = error_from_wire([code, *payload])
    assert (req_id, type(rebuilt), str(rebuilt)) == (9, cls, str(sent))
    assert error_to_wire(rebuilt) == error_to_wire(sent)


def test_wire_fields_of_a_handler_error_and_a_conflict():
    """error_to_wire gives [code, message, current_version, exc_type]."""
    assert error_to_wire(errors.HandlerError("boom", exc_type="KeyError")) == ["handler", "boom", 0, "KeyError"]
    assert error_to_wire(errors.VersionConflict("stale", 3)) == ["conflict", "stale", 3, ""]
    assert error_to_wire(errors.Overloaded("full")) == ["overloaded", "full", 0, ""]


def test_a_short_wire_form_from_an_older_peer_still_decodes():
    """[code, message, version] without exc_type (the older payload) rebuilds the error, exc_type empty."""
    err = error_from_wire(["handler", "boom", 0])
    assert type(err) is errors.HandlerError and err.exc_type == ""
    assert error_from_wire(["conflict", "stale", 5]).current_version == 5  # type: ignore[attr-defined]


def test_an_unknown_code_is_a_plain_error_the_client_does_not_retry():
    """A code from a newer peer becomes a plain SpacegridError with the message, neither retryable nor not-applied."""
    err = error_from_wire(["from-a-newer-version", "hm", 0, ""])
    assert type(err) is SpacegridError and str(err) == "hm" and not err.retryable


def test_bad_request_is_request_error():
    """BadRequest is the issue's name for RequestError: one class, two names."""
    assert errors.BadRequest is errors.RequestError
