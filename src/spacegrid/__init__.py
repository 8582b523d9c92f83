"""spacegrid: a space-based architecture runtime for Python on NATS JetStream."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spacegrid.core.eviction import Eviction
from spacegrid.errors import SpacegridError
from spacegrid.limits import Limits
from spacegrid.space import EntryContext, PartitionView, Space
from spacegrid.valuetypes import ValueType

if TYPE_CHECKING:
    from spacegrid.client import Client, SyncClient

__all__ = ["Client", "EntryContext", "Eviction", "Limits", "PartitionView", "Space", "SpacegridError", "SyncClient",
           "ValueType"]

_LAZY = {"Client", "SyncClient"}  # imported on first use, so that importing spacegrid.core does not import nats


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from spacegrid import client

        return getattr(client, name)
    raise AttributeError(f"module 'spacegrid' has no attribute {name!r}")
