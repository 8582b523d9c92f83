"""The one exception hierarchy of spacegrid; whether an error is retryable is a property of its class."""

from __future__ import annotations


class SpacegridError(Exception):
    """Root of every error spacegrid raises on purpose."""

    #: A retryable error guarantees the operation was NOT applied, so the client may send it again.
    retryable: bool = False
    #: Short machine-readable code carried on the wire.
    code: str = "error"


class ConfigError(SpacegridError):
    """A setting, a file or a binary spacegrid needs is missing or invalid; the message says what to do."""

    code = "config"


class DefinitionError(SpacegridError):
    """The space definition (maps, handlers, queries) is invalid."""

    code = "definition"


class RequestError(SpacegridError):
    """The caller sent something the grid can't accept; retrying the same request fails the same way."""

    code = "bad_request"


class UnknownMap(RequestError):
    code = "unknown_map"


class UnknownHandler(RequestError):
    code = "unknown_handler"


class InvalidKey(RequestError):
    code = "invalid_key"


class EncodeError(RequestError):
    """A value can't be encoded as msgpack (only dict, list, str, int, float, bool, bytes, None)."""

    code = "encode"


class DecodeError(RequestError):
    """A message could not be decoded."""

    code = "decode"


class PayloadTooLarge(RequestError):
    code = "too_large"


class WrongPartition(RequestError):
    """A handler touched a key that lives in another partition than the one it runs on."""

    code = "wrong_partition"


class HandlerError(SpacegridError):
    """A handler or query raised; its writes were discarded."""

    code = "handler"


class HandlerTimeout(HandlerError):
    """A handler ran past its time limit; its writes were discarded."""

    code = "handler_timeout"


class VersionConflict(SpacegridError):
    """A compare-and-set saw another version than the one expected."""

    code = "conflict"

    def __init__(self, message: str, current_version: int = 0) -> None:
        super().__init__(message)
        self.current_version = current_version


class RoutingError(SpacegridError):
    """The request reached no PU able to serve it; it was not applied."""

    retryable = True
    code = "routing"


class NotOwner(RoutingError):
    """The PU does not own the partition (any more, or not yet); retry with a newer table."""

    code = "not_owner"


class PartitionUnavailable(RoutingError):
    """The owner is recovering or handing off the partition; retry shortly."""

    code = "unavailable"


class Fenced(RoutingError):
    """The owner's append was rejected by the log fence: it was deposed; nothing was applied."""

    code = "fenced"


class CommitUnknown(SpacegridError):
    """The append's outcome is unknown (timeout, lost owner); retrying with the same operation id is safe."""

    code = "commit_unknown"


class LogGap(SpacegridError):
    """A partition's log does not continue where its state stands (trimmed past it): reload from the store."""

    code = "log_gap"


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


class GridTimeout(SpacegridError):
    """The call's deadline passed before the grid answered; the operation may or may not have been applied."""

    code = "timeout"


class GridUnavailable(SpacegridError):
    """The grid (NATS, or the space's metadata) can't be reached or isn't set up."""

    code = "grid_unavailable"


class ClosedError(SpacegridError):
    """The client or PU was closed by its own side."""

    code = "closed"


_BY_CODE: dict[str, type[SpacegridError]] = {}


def _register(cls: type[SpacegridError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _register(sub)


_register(SpacegridError)


def error_from_code(code: str, message: str, current_version: int = 0) -> SpacegridError:
    """Rebuild an error received over the wire (unknown codes become a plain SpacegridError)."""
    cls = _BY_CODE.get(code, SpacegridError)
    if cls is VersionConflict:
        return VersionConflict(message, current_version)
    err = cls(message)
    return err
