"""spacegrid: a space-based architecture runtime for Python on NATS JetStream."""

from spacegrid.client import Client, SyncClient
from spacegrid.core.eviction import Eviction
from spacegrid.errors import SpacegridError
from spacegrid.limits import Limits
from spacegrid.space import EntryContext, PartitionView, Space

__all__ = ["Client", "EntryContext", "Eviction", "Limits", "PartitionView", "Space", "SpacegridError", "SyncClient"]
