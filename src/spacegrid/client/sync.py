"""A thin synchronous wrapper: the asyncio client on its own event loop in a background thread."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Coroutine, TypeVar

from spacegrid.client.client import Client
from spacegrid.limits import DEFAULT_LIMITS, Limits
from spacegrid.space import Space

T = TypeVar("T")


class SyncClient:
    """The same calls as Client, blocking. Use from scripts, shells and threads; close() when done."""

    def __init__(self, space: Space, nats_url: str, limits: Limits = DEFAULT_LIMITS, **access: Any) -> None:
        """`access`: Client.connect's credential options (creds=, tls_ca=, ..., data_dir=, access=)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="spacegrid-client", daemon=True)
        self._thread.start()
        self._client = self._run(Client.connect(space, nats_url, limits, **access))

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    @property
    def table(self) -> Any:
        return self._client.table

    def get(self, map: str, key: str, deadline_s: float | None = None) -> Any:
        return self._run(self._client.get(map, key, deadline_s))

    def get_entry(self, map: str, key: str, deadline_s: float | None = None) -> tuple[Any, int] | None:
        return self._run(self._client.get_entry(map, key, deadline_s))

    def get_from_backup(self, map: str, key: str, deadline_s: float | None = None) -> Any:
        return self._run(self._client.get_from_backup(map, key, deadline_s))

    def get_many(self, map: str, keys: list[str], deadline_s: float | None = None) -> dict[str, Any]:
        return self._run(self._client.get_many(map, keys, deadline_s))

    def put(self, map: str, key: str, value: Any, expected_version: int | None = None,
            deadline_s: float | None = None) -> int:
        return self._run(self._client.put(map, key, value, expected_version, deadline_s))

    def delete(self, map: str, key: str, expected_version: int | None = None, deadline_s: float | None = None) -> bool:
        return self._run(self._client.delete(map, key, expected_version, deadline_s))

    def execute(self, handler: str, key: str, args: Any = None, deadline_s: float | None = None) -> Any:
        return self._run(self._client.execute(handler, key, args, deadline_s))

    def query(self, name: str, args: Any = None, deadline_s: float | None = None) -> Any:
        return self._run(self._client.query(name, args, deadline_s))

    def close(self) -> None:
        try:
            self._run(self._client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
