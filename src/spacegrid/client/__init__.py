"""The smart client: routing by the partition table, per-tick batching, deadlines and one retry policy."""

from spacegrid.client.client import Client
from spacegrid.client.sync import SyncClient

__all__ = ["Client", "SyncClient"]
