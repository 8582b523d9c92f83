"""The choice of store backend by URL: sqlite:... or postgresql://... (the backends import base, never this)."""

from __future__ import annotations

from collections.abc import Sequence

from spacegrid.errors import ConfigError
from spacegrid.limits import DEFAULT_LIMITS, Limits
from spacegrid.store.base import Store
from spacegrid.store.postgres import PostgresStore
from spacegrid.store.sqlite import SqliteStore


def open_store(url: str, space: str, maps: Sequence[str], limits: Limits = DEFAULT_LIMITS) -> Store:
    """A store for the space's maps by URL: sqlite:///absolute/path.db, sqlite:relative/path.db, or
    postgresql://user@host:port/database (postgres:// too; query parameters such as search_path are passed on).
    Not connected yet: call open()."""
    if url.startswith("sqlite:"):
        return SqliteStore(sqlite_path(url), space, maps, busy_timeout_s=limits.store_statement_timeout_s)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url, space, maps, pool_size=limits.store_pool_size,
                             statement_timeout_s=limits.store_statement_timeout_s)
    raise ConfigError(f"unknown store URL {url!r}: use sqlite:///absolute/path.db, sqlite:relative/path.db or "
                      "postgresql://user@host:port/database")


def sqlite_path(url: str) -> str:
    """The file of a sqlite: URL: sqlite:///abs (or sqlite:////abs) names /abs, sqlite:rel names rel."""
    assert url.startswith("sqlite:")
    path = url.removeprefix("sqlite:")
    if path.startswith("//"):
        path = path.removeprefix("//")
        if not path.startswith("/"):
            raise ConfigError(f"store URL {url!r} names a host; a SQLite file is sqlite:///absolute/path.db or "
                              "sqlite:relative/path.db")
        path = "/" + path.lstrip("/")
    if not path or path.endswith("/"):
        raise ConfigError(f"store URL {url!r} names no file: use sqlite:///absolute/path.db or sqlite:relative.db")
    return path
