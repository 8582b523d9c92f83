"""Durable stores behind the grid: SQLite (embedded) and PostgreSQL, chosen by URL (store.factory)."""

from __future__ import annotations

from spacegrid.core.rows import Row, digest_of
from spacegrid.store.base import DeadLetter, Progress, Store
from spacegrid.store.factory import open_store

__all__ = ["DeadLetter", "Progress", "Row", "Store", "digest_of", "open_store"]
