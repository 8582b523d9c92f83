"""The one table from spacegrid's error classes to HTTP statuses, and the error body every failed request gets:

    {"error": "NotOwner", "code": "not_owner", "message": "...", "retry": "safe" | "no" | "outcome unknown"}

`retry` follows from the class's base alone (spacegrid.errors): NotApplied → "safe" (nothing was applied); OutcomeUnknown
→ "outcome unknown" for a write (it may have been applied: read it back before sending it again; the gateway takes no
idempotency key) and "safe" for a read; anything else → "no" (the same request fails the same way)."""

from __future__ import annotations

from typing import Any, Final

from spacegrid.errors import (
    CallerError,
    ClosedError,
    ConfigError,
    Forbidden,
    HandlerError,
    NotApplied,
    NotFound,
    OutcomeUnknown,
    Overloaded,
    PayloadTooLarge,
    SpacegridError,
    Unauthorized,
    UnknownHandler,
    UnknownMap,
    VersionConflict,
)

RETRY_SAFE: Final = "safe"
RETRY_NO: Final = "no"
RETRY_UNKNOWN: Final = "outcome unknown"
RETRY_AFTER_S: Final = 1  # the Retry-After of a 429 or 503

#: First match wins: the most specific classes first, each base last. Every SpacegridError meets one row.
STATUS_BY_CLASS: Final[tuple[tuple[type[SpacegridError], int], ...]] = (
    (Unauthorized, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (UnknownMap, 404),
    (UnknownHandler, 404),  # a handler or a query
    (VersionConflict, 409),
    (PayloadTooLarge, 413),
    (HandlerError, 422),  # the handler raised or ran out of time; its writes were discarded
    (CallerError, 400),  # RequestError, InvalidKey, EncodeError, DecodeError, WrongPartition
    (Overloaded, 429),
    (NotApplied, 503),  # NotOwner, PartitionUnavailable, Fenced, GridUnavailable...: retried until the deadline
    (OutcomeUnknown, 504),  # GridTimeout, CommitUnknown
    (ClosedError, 503),  # the gateway is stopping
    (ConfigError, 502),  # the grid refused the gateway's own credential: the operator's to fix
    (SpacegridError, 500),
)

#: The statuses an operation can answer with, for the OpenAPI document: (status, what it means).
STATUS_MEANINGS: Final[dict[int, str]] = {
    400: "Bad input (JSON, key, arguments, expected_version); retry: no",
    401: "No bearer token, or not one of this gateway's; retry: no",
    403: "The token's role may not do this (a reader writing); retry: no",
    404: "No such entry, map, handler or query; retry: no",
    409: "expected_version did not match: the body's current_version is the entry's; retry: no",
    413: "The body or the encoded request is over its bound; retry: no",
    422: "The handler raised (exc_type names the exception) or ran out of time; its writes were discarded; retry: no",
    429: "Too many requests in flight; nothing was applied; retry: safe, after Retry-After",
    500: "An error the gateway did not expect; retry: no",
    502: "The grid refused the gateway's credential; retry: no",
    503: "No PU could serve it in time (failover, start-up) or the gateway is stopping; nothing was applied; "
         "retry: safe, after Retry-After",
    504: "The deadline passed after the request was sent: a write may or may not have been applied "
         "(retry: outcome unknown; read it back first); a read may be retried",
}


def status_of(error: SpacegridError) -> int:
    for cls, status in STATUS_BY_CLASS:
        if isinstance(error, cls):
            return status
    raise AssertionError(f"{type(error).__name__} is not under SpacegridError")  # the last row catches all


def retry_advice(error: SpacegridError, write: bool) -> str:
    """What the HTTP caller may do: send it again ("safe"), not ("no"), or find out first ("outcome unknown")."""
    if isinstance(error, NotApplied):
        return RETRY_SAFE
    if isinstance(error, OutcomeUnknown | ClosedError):
        return RETRY_UNKNOWN if write else RETRY_SAFE
    return RETRY_NO


def error_body(error: SpacegridError, write: bool) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, headers) for a request that failed with `error`."""
    status = status_of(error)
    body: dict[str, Any] = {"error": type(error).__name__, "code": error.code, "message": str(error),
                            "retry": retry_advice(error, write)}
    if isinstance(error, VersionConflict):
        body["current_version"] = error.current_version
    if isinstance(error, HandlerError) and error.exc_type:
        body["exc_type"] = error.exc_type
    headers: dict[str, str] = {}
    if status in (429, 503):
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="spacegrid"'
    return status, body, headers
