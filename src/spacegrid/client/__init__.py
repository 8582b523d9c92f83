"""The smart client: routing by the partition table, per-tick batching, deadlines and one retry policy."""

from spacegrid.client.client import BackupRead, Client
from spacegrid.client.sync import SyncClient

__all__ = ["BackupRead", "Client", "SyncClient"]
