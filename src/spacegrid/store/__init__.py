"""Durable stores behind the grid: SQLite (embedded) and PostgreSQL, chosen by URL."""

from __future__ import annotations

from spacegrid.store.base import DeadLetter, Progress, Row, Store, digest_of, open_store

__all__ = ["DeadLetter", "Progress", "Row", "Store", "digest_of", "open_store"]
