"""The console's ASGI app: the page, a JSON snapshot of the grid, and the events timeline as server-sent events."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from spacegrid.console.state import GridView
from spacegrid.errors import SpacegridError

TIMELINE_BACKLOG_S = 3600.0  # a page opened shows the events of the last hour, then new ones as they come
EVENTS_IDLE_S = 0.5


class EventSource(Protocol):
    def __call__(self, since_s: float | None, follow: bool, idle_s: float) -> AsyncIterator[dict[str, Any]]: ...


def build_app(view: GridView, events: EventSource) -> Starlette:
    page = resources.files("spacegrid.console").joinpath("static/index.html").read_text(encoding="utf-8")

    async def index(_: Request) -> Response:
        return HTMLResponse(page)

    async def snapshot(_: Request) -> Response:
        try:
            return JSONResponse(await view.snapshot())
        except SpacegridError as exc:  # the grid is not answering: the page says so and tries again
            return JSONResponse({"error": str(exc), "code": exc.code}, status_code=503)

    async def timeline(_: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            yield ": spacegrid events\n\n"
            async for event in events(time.time() - TIMELINE_BACKLOG_S, True, EVENTS_IDLE_S):
                yield f"data: {json.dumps(event, separators=(',', ':'))}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    return Starlette(routes=[Route("/", index), Route("/api/snapshot", snapshot), Route("/api/events", timeline)])
