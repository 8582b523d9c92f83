"""The HTTP gateway's pure parts: the error-class → status table and retry advice, bearer tokens, JSON ↔ grid values,
and the OpenAPI document generated from a space."""

from __future__ import annotations

import pytest

from spacegrid import errors
from spacegrid.errors import DecodeError, Forbidden, NotApplied, OutcomeUnknown, SpacegridError, Unauthorized
from spacegrid.gateway.auth import Caller, TokenVerifier, mint_token, require_write
from spacegrid.gateway.openapi import build
from spacegrid.gateway.statuses import error_body, retry_advice, status_of
from spacegrid.gateway.values import parse_json, to_json
from spacegrid.testing.apps import space
from tests.unit.test_errors import error_classes, example


@pytest.mark.parametrize("cls", error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_class_has_a_status_and_advice_from_its_base(cls: type[SpacegridError]) -> None:
    """Each class of spacegrid.errors maps to one HTTP status; "safe" exactly for NotApplied (and a read's unknown
    outcome), "outcome unknown" for a write that may have been applied, "no" otherwise; 5xx never says "no" for a
    class the client would retry."""
    error = example(cls)
    status = status_of(error)
    assert 400 <= status < 600
    write_advice, read_advice = retry_advice(error, True), retry_advice(error, False)
    if isinstance(error, NotApplied):
        assert (write_advice, read_advice) == ("safe", "safe") and status in (429, 503)
    elif isinstance(error, OutcomeUnknown):
        assert (write_advice, read_advice) == ("outcome unknown", "safe") and status == 504
    elif isinstance(error, errors.CallerError):
        assert write_advice == "no" and 400 <= status < 500


def test_error_bodies_carry_the_fields_of_their_class() -> None:
    """A conflict's body names the current version, a handler error the exception type; 429 and 503 carry
    Retry-After, 401 WWW-Authenticate."""
    assert error_body(errors.VersionConflict("stale", 7), True)[1]["current_version"] == 7
    assert error_body(errors.HandlerError("boom", "KeyError"), True)[1]["exc_type"] == "KeyError"
    assert error_body(errors.Overloaded("full"), False)[2] == {"Retry-After": "1"}
    assert error_body(errors.NotOwner("moved"), False)[:2] == (503, {"error": "NotOwner", "code": "not_owner",
                                                                    "message": "moved", "retry": "safe"})
    assert "WWW-Authenticate" in error_body(Unauthorized("no token"), False)[2]


def test_tokens_verify_only_with_their_key_role_and_lifetime() -> None:
    """A minted token proves its role; another key's, a changed role, an expired one or a malformed header is
    Unauthorized; a reader may not write."""
    key = b"k" * 32
    verifier = TokenVerifier(key)
    token = mint_token(key, "reader", 0, 1000.0)
    assert verifier.caller(f"Bearer {token}", 5000.0).role == "reader"
    for header in (None, "", token, f"Basic {token}", f"Bearer {token.replace('.reader.', '.client.')}",
                   f"Bearer {mint_token(b'x' * 32, 'client', 0, 0)}", f"Bearer {mint_token(key, 'client', 10, 0)}",
                   "Bearer " + "a" * 300):
        with pytest.raises(Unauthorized):
            verifier.caller(header, 100.0)
    with pytest.raises(Forbidden):
        require_write(Caller("reader", "t"), "PUT kv")
    require_write(Caller("client", "t"), "PUT kv")


def test_json_values_convert_both_ways() -> None:
    """{"$base64"} objects become bytes and bytes go out as them; NaN, bad UTF-8 and deep nesting are DecodeError;
    an empty body is None unless required."""
    assert parse_json(b'{"a": {"$base64": "AP8="}, "b": [1, 2.5]}', "v", True) == {"a": b"\x00\xff", "b": [1, 2.5]}
    assert to_json({"a": b"\x00\xff", 1: float("nan")}) == {"a": {"$base64": "AP8="}, "1": "nan"}
    assert parse_json(b"", "args", False) is None
    for body in (b"", b"NaN", b"\xff", b"[" * 100 + b"]" * 100, b'{"$base64": "!"}', b"{"):
        with pytest.raises(DecodeError):
            parse_json(body, "v", True)


def test_the_document_has_an_operation_per_map_handler_and_query() -> None:
    """The OpenAPI document of the test app names each map's entry operations, each handler and query, with the
    role each needs and unique operation ids."""
    document = build(space, "1.0")
    operations = [op for item in document["paths"].values() for method, op in item.items() if method != "parameters"]
    ids = [op["operationId"] for op in operations]
    assert len(ids) == len(set(ids)) == 1 + 5 * len(space.maps) + len(space.handlers) + len(space.queries)
    assert document["paths"]["/maps/kv/entries/{key}"]["put"]["x-spacegrid-role"] == "client"
    assert document["paths"]["/queries/count"]["post"]["x-spacegrid-role"] == "reader"
