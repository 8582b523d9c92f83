"""A thin synchronous wrapper: the asyncio client on its own event loop in a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Coroutine, TypeVar

from spacegrid.client.client import Client
from spacegrid.client.feed import ContinuousQuery
from spacegrid.core.feed import Change, Position
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
            deadline_s: float | None = None, op_id: str | None = None) -> int:
        return self._run(self._client.put(map, key, value, expected_version, deadline_s, op_id))

    def delete(self, map: str, key: str, expected_version: int | None = None, deadline_s: float | None = None,
               op_id: str | None = None) -> bool:
        return self._run(self._client.delete(map, key, expected_version, deadline_s, op_id))

    def execute(self, handler: str, key: str, args: Any = None, deadline_s: float | None = None,
                op_id: str | None = None) -> Any:
        return self._run(self._client.execute(handler, key, args, deadline_s, op_id))

    def query(self, name: str, args: Any = None, deadline_s: float | None = None) -> Any:
        return self._run(self._client.query(name, args, deadline_s))

    def log_position(self) -> Position:
        return self._run(self._client.log_position())

    def listen(self, map: str | None, key: str | None = None, where: Callable[[str, Any], bool] | None = None,
               from_: str | int | Position | None = None, expiries: bool = True) -> Iterator[Change]:
        """Client.listen, blocking: iterate it; leaving the loop (break, an exception) closes the feed."""
        feed = self._client.listen(map, key, where, from_, expiries)
        try:
            while True:
                try:
                    yield self._run(_awaited(feed.__anext__()))
                except StopAsyncIteration:
                    return
        finally:
            self._run(_closed(feed))

    def continuous_query(self, map: str, where: Callable[[str, Any], bool] | None = None) -> SyncContinuousQuery:
        """Client.continuous_query, blocking; its entries are read through the client's loop (a copy)."""
        return SyncContinuousQuery(self, self._run(self._client.continuous_query(map, where)))

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


class SyncContinuousQuery:
    """A ContinuousQuery driven from another thread: `entries()` (a copy, taken on the client's loop), `sync()`,
    `close()`."""

    def __init__(self, client: SyncClient, query: ContinuousQuery) -> None:
        self._client = client
        self._query = query

    def entries(self) -> dict[str, Any]:
        return self._client._run(_value(lambda: dict(self._query.entries)))

    def sync(self, timeout_s: float = 10.0) -> None:
        self._client._run(self._query.sync(timeout_s))

    def close(self) -> None:
        self._client._run(self._query.close())

    def __enter__(self) -> SyncContinuousQuery:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


async def _awaited(step: Awaitable[T]) -> T:
    return await step


async def _closed(feed: AsyncIterator[Change]) -> None:
    await feed.aclose()  # type: ignore[attr-defined]  # listen's async generator


async def _value(read: Callable[[], T]) -> T:
    return read()
