"""The one exception hierarchy of spacegrid. Three bases say what the caller may do after an operation failed:

- NotApplied: the operation was not applied; sending it again is safe (after a back-off).
- OutcomeUnknown: it may or may not have been applied; sending it again is safe only with the same operation id
  (the client does so: every write carries one that the owner remembers).
- CallerError: the caller's fault; the same request fails the same way again.

The client's retry policy (spacegrid.client.retry) follows from these bases alone. Errors outside them (ConfigError,
DefinitionError, LogGap, NotLoaded, the StoreError family, ClosedError) are not outcomes of a client operation the
grid served, or (ClosedError) say nothing about it; the client never retries them."""

from __future__ import annotations

from typing import Any


class SpacegridError(Exception):
    """Root of every error spacegrid raises on purpose."""

    #: Short machine-readable code carried on the wire; unique per class of this module.
    code: str = "error"

    @property
    def retryable(self) -> bool:
        """Whether the client sends the operation again (NotApplied as is, OutcomeUnknown with the same operation
        id). It does NOT say the operation was not applied: check isinstance(error, NotApplied) for that."""
        return isinstance(self, NotApplied | OutcomeUnknown)


# ---- the three bases a caller acts on ----------------------------------------------------------------------


class NotApplied(SpacegridError):
    """The operation was NOT applied: safe to send again (the client does, with back-off, until its deadline)."""

    code = "not_applied"


class OutcomeUnknown(SpacegridError):
    """The operation may or may not have been applied: safe to send again only with the same operation id."""

    code = "outcome_unknown"


class CallerError(SpacegridError):
    """The caller's fault: retrying the same request fails the same way."""

    code = "caller"


# ---- not applied -------------------------------------------------------------------------------------------


class RoutingError(NotApplied):
    """The request reached no PU able to serve it; it was not applied."""

    code = "routing"


class NotOwner(RoutingError):
    """The PU does not own the partition (any more, or not yet); retry with a newer table."""

    code = "not_owner"


class PartitionUnavailable(RoutingError):
    """The partition has no owner able to serve it now (none yet, recovering, handing off, its key not loadable);
    retry shortly."""

    code = "unavailable"


class Fenced(RoutingError):
    """The owner's append was rejected by the log fence: it was deposed; nothing was applied. `last_seq`: the
    sequence the fence found (what the appender must catch up with), 0 when not known."""

    code = "fenced"

    def __init__(self, message: str, last_seq: int = 0) -> None:
        super().__init__(message)
        self.last_seq = last_seq


class FenceBusy(NotApplied):
    """A replicated stream refused an append because another one fenced on the same claims is still in process
    (JetStream checks the fence before it proposes the message); nothing was applied: append again once it is."""

    code = "fence_busy"


class Overloaded(NotApplied):
    """A queue on the way (a PU's, or the client's own in-flight limit) is full; nothing was applied: back off
    before sending again."""

    code = "overloaded"


class GridUnavailable(NotApplied):
    """The grid (NATS, JetStream, or the space's metadata) can't be reached or isn't set up. Raised before an
    operation is sent (connecting, opening the space), or where the engine knows nothing was taken (an append
    JetStream refused), so nothing was applied."""

    code = "grid_unavailable"


class LogUnavailable(GridUnavailable):
    """The log did not take an append: no JetStream stream answered its subject (JetStream electing a leader, or
    the stream deleted); nothing was applied. Inside a PU only: the append is retried, the partitions are kept."""

    code = "log_unavailable"


class LogMissing(GridUnavailable):
    """The space's log stream is gone (deleted by an operator): PUs keep serving reads from memory and flushing
    to the store, but refuse writes until an operator recreates it (`spacegrid repair --recreate-log`)."""

    code = "log_missing"


# ---- outcome unknown ---------------------------------------------------------------------------------------


class CommitUnknown(OutcomeUnknown):
    """The append's outcome is unknown (timeout, lost owner); retrying with the same operation id is safe."""

    code = "commit_unknown"


class GridTimeout(OutcomeUnknown):
    """The call's deadline passed after a request had left, before the grid answered it: the operation may or may
    not have been applied."""

    code = "timeout"


class AttemptTimeout(OutcomeUnknown):
    """Inside the client: no reply to one attempt in time, or its PU left the table; retried with the same
    operation id. Never sent over the wire."""

    code = "attempt_timeout"


# ---- the caller's fault ------------------------------------------------------------------------------------


class RequestError(CallerError):
    """The caller sent something the grid can't accept (also named BadRequest)."""

    code = "bad_request"


BadRequest = RequestError


class UnknownMap(RequestError):
    code = "unknown_map"


class UnknownHandler(RequestError):
    code = "unknown_handler"


class InvalidKey(RequestError):
    code = "invalid_key"


class EncodeError(RequestError):
    """A value can't be encoded: neither a msgpack type (dict, list, str, int, float, bool, bytes, None) nor a type
    registered on the space (docs/typed-values.md)."""

    code = "encode"


class DecodeError(RequestError):
    """A message could not be decoded."""

    code = "decode"


class PayloadTooLarge(RequestError):
    code = "too_large"


class WrongPartition(RequestError):
    """A handler touched a key that lives in another partition than the one it runs on."""

    code = "wrong_partition"


class VersionConflict(CallerError):
    """A compare-and-set saw another version than the one expected."""

    code = "conflict"

    def __init__(self, message: str, current_version: int = 0) -> None:
        super().__init__(message)
        self.current_version = current_version


class HandlerError(CallerError):
    """A user's handler or query raised; its writes were discarded. `exc_type` names the exception it raised
    ("ValueError"; "" when the grid refused what the handler did, such as a write from a read-only handler)."""

    code = "handler"

    def __init__(self, message: str, exc_type: str = "") -> None:
        super().__init__(message)
        self.exc_type = exc_type


class HandlerTimeout(HandlerError):
    """A handler ran past its time limit; its writes were discarded."""

    code = "handler_timeout"


# ---- the HTTP gateway's own (spacegrid.gateway): the caller's fault too -------------------------------------


class Unauthorized(CallerError):
    """An HTTP caller of the gateway presented no bearer token, or one the gateway did not issue (or expired)."""

    code = "unauthorized"


class Forbidden(CallerError):
    """The role of the caller's token may not do this (a reader's token writing)."""

    code = "forbidden"


class NotFound(CallerError):
    """Over HTTP: the entry does not exist (the same read finds nothing until someone writes it), or no such path."""

    code = "not_found"


# ---- outside the three bases -------------------------------------------------------------------------------


class ConfigError(SpacegridError):
    """A setting, a file or a binary spacegrid needs is missing or invalid; the message says what to do."""

    code = "config"


class AccessDenied(ConfigError):
    """NATS refused this process's credentials (missing, not the grid's, revoked): fix them; retrying won't help."""

    code = "access_denied"


class DefinitionError(SpacegridError):
    """The space definition (maps, handlers, queries) is invalid."""

    code = "definition"


class PoisonedLog(SpacegridError):
    """A message of the log can not be applied (undecodable, or invalid for the partition's state): the partitions
    whose recovery reads it stop until an operator repairs the log (`spacegrid repair`); retrying won't help.
    `seq` and `subject`: the message."""

    code = "poisoned_log"

    def __init__(self, message: str, seq: int = 0, subject: str = "") -> None:
        super().__init__(message)
        self.seq = seq
        self.subject = subject


class LogGap(SpacegridError):
    """A partition's log does not continue where its state stands (trimmed past it): reload from the store."""

    code = "log_gap"


class ChangesLost(SpacegridError):
    """A change feed can not go on from its position: the log no longer holds the changes after it (trimmed behind
    the store, or the log was recreated). Retrying won't help: take a new snapshot (`continuous_query`), or read the
    store, and listen from the position it gives."""

    code = "changes_lost"


class NotLoaded(SpacegridError):
    """Inside a PU: an operation needs a key that may be in the store but is not in memory (evicted); the PU
    reads it through and runs the operation again. Never sent to a client."""

    code = "not_loaded"

    def __init__(self, message: str, map_name: str = "", key: str = "") -> None:
        super().__init__(message)
        self.map_name = map_name
        self.key = key


class StoreError(SpacegridError):
    """The durable store failed."""

    code = "store"


class StoreUnavailable(StoreError):
    """The store can't be reached or can't take the write now (connection, timeout, lock): retry later."""

    code = "store_unavailable"


class StoreRejected(StoreError):
    """The store refused the data itself (a constraint, a trigger, a value it can't hold): retrying won't help."""

    code = "store_rejected"


class StaleWrite(StoreError):
    """The store already holds a newer snapshot of the partition: the writer was deposed."""

    code = "stale_write"


class ClosedError(SpacegridError):
    """The client or PU was closed by its own side (a call in flight then may or may not have been applied)."""

    code = "closed"


# ---- the wire ------------------------------------------------------------------------------------------------

_BY_CODE: dict[str, type[SpacegridError]] = {}


def _register(cls: type[SpacegridError]) -> None:
    if cls.__module__ == __name__:  # subclasses elsewhere reuse their parent's code
        assert _BY_CODE.setdefault(cls.code, cls) is cls, f"two error classes with code {cls.code!r}"
    for sub in cls.__subclasses__():
        _register(sub)


_register(SpacegridError)


def error_to_wire(error: SpacegridError) -> list[Any]:
    """[code, message, current_version, exc_type]: what error_from_wire needs to rebuild `error` on the other side
    (current_version is 0 but for VersionConflict, exc_type "" but for HandlerError)."""
    version = error.current_version if isinstance(error, VersionConflict) else 0
    exc_type = error.exc_type if isinstance(error, HandlerError) else ""
    return [error.code, str(error), version, exc_type]


def error_from_wire(fields: list[Any]) -> SpacegridError:
    """Rebuild an error from [code, message, current_version?, exc_type?] (a peer without the optional fields
    sends fewer); an unknown code becomes a plain SpacegridError, which the client does not retry."""
    code, message = str(fields[0]), str(fields[1])
    version = int(fields[2]) if len(fields) > 2 and fields[2] is not None else 0
    exc_type = str(fields[3]) if len(fields) > 3 and fields[3] is not None else ""
    cls = _BY_CODE.get(code, SpacegridError)
    if issubclass(cls, VersionConflict):
        return cls(message, version)
    if issubclass(cls, HandlerError):
        return cls(message, exc_type)
    return cls(message)


def error_from_code(code: str, message: str, current_version: int = 0) -> SpacegridError:
    """Rebuild an error from its code, message and current_version (the older form of error_from_wire)."""
    return error_from_wire([code, message, current_version])
