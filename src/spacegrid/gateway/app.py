"""The gateway's ASGI app: entries, handlers and queries of one space over HTTP/JSON through one Client, behind tokens.

    GET    /maps/{map}/entries/{key}                          reader   {"key", "value", "version"} (ETag: version)
    PUT    /maps/{map}/entries/{key}[?expected_version=N]     client   body: the value; {"version"}
    DELETE /maps/{map}/entries/{key}[?expected_version=N]     client   {"deleted"}
    GET    /maps/{map}/backups/{key}                          reader   {"key", "value", "version", "lag_records", "lag_s"}
    POST   /handlers/{handler}/{key}                          client (reader for a read-only handler)  body: args
    POST   /queries/{query}                                   reader   body: args; {"result"}
    GET    /maps/{map}/changes[?key=K&from=P]                 reader   server-sent events of the change feed
    GET    /openapi.json, /docs, /healthz                     no token

Every failure answers with statuses.error_body; a request never stops the process."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from spacegrid.errors import NotFound, Overloaded, RequestError, SpacegridError
from spacegrid.gateway import openapi
from spacegrid.gateway.auth import ANONYMOUS_WRITER, Caller, TokenVerifier, require_write
from spacegrid.gateway.changes import ChangeStreams
from spacegrid.gateway.idempotency import op_id_of
from spacegrid.gateway.statuses import RETRY_NO, error_body
from spacegrid.gateway.values import dumps, parse_json, read_body, to_json
from spacegrid.limits import GATEWAY_BODY_BYTES_MAX, GATEWAY_REQUESTS_IN_FLIGHT_MAX, GATEWAY_SSE_KEEPALIVE_S

if TYPE_CHECKING:
    from spacegrid.client.client import Client

log = logging.getLogger("spacegrid.gateway")
VERSION_MAX = 2**63 - 1
Operation = Callable[[Request, Caller], Awaitable[Response]]


def json_response(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(document), status_code=status, headers=headers, media_type="application/json")


def error_response(error: SpacegridError, write: bool) -> Response:
    status, body, headers = error_body(error, write)
    return json_response(body, status, headers)


def expected_version(request: Request) -> int | None:
    """The `expected_version` query parameter: None when absent, else an integer from 0."""
    text = request.query_params.get("expected_version")
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or int(text) > VERSION_MAX:
        raise RequestError(f"expected_version is an integer from 0 to {VERSION_MAX}, not {text[:40]!r}")
    return int(text)


class Gateway:
    """The endpoints over one client; counts the requests in flight against GATEWAY_REQUESTS_IN_FLIGHT_MAX."""

    def __init__(self, client: Client, verifier: TokenVerifier | None, version: str,
                 body_bytes_max: int = GATEWAY_BODY_BYTES_MAX, keepalive_s: float = GATEWAY_SSE_KEEPALIVE_S) -> None:
        self.client = client
        self.space = client.space
        self.verifier = verifier
        self.body_bytes_max = body_bytes_max
        self.in_flight = 0
        self.streams = ChangeStreams(client, keepalive_s)
        self.document = openapi.build(self.space, version)
        self.document_json = dumps(self.document)

    def caller(self, request: Request) -> Caller:
        if self.verifier is None:
            return ANONYMOUS_WRITER
        return self.verifier.caller(request.headers.get("authorization"), time.time())

    def endpoint(self, operation: Operation, query: frozenset[str] = frozenset()
                 ) -> Callable[[Request], Awaitable[Response]]:
        """`operation` behind the token check and the in-flight bound, its errors as error bodies. A query
        parameter it does not take is a 400 (a misspelt expected_version must not turn into an unconditional
        write)."""

        async def handle(request: Request) -> Response:
            request.state.write = False  # an operation sets it once it may change something (for `retry`)
            if self.in_flight >= GATEWAY_REQUESTS_IN_FLIGHT_MAX:
                return error_response(Overloaded(f"{self.in_flight} requests in flight at the gateway "
                                                 "(limits.GATEWAY_REQUESTS_IN_FLIGHT_MAX): back off"), False)
            self.in_flight += 1
            try:
                caller = self.caller(request)
                unknown = request.query_params.keys() - query
                if unknown:
                    raise RequestError(f"unknown query parameter {sorted(unknown)[0][:40]!r}: {request.method} takes "
                                       f"{', '.join(sorted(query)) or 'none'} here (see /openapi.json)")
                return await operation(request, caller)
            except SpacegridError as exc:
                return error_response(exc, request.state.write)
            except Exception:  # a bug of ours: say so in the one error body, keep serving
                log.exception("%s %s failed", request.method, request.url.path)
                return json_response({"error": "InternalError", "code": "internal", "retry": RETRY_NO,
                                      "message": "the gateway failed unexpectedly; its log has the trace"}, 500)
            finally:
                self.in_flight -= 1

        return handle

    async def body(self, request: Request, what: str, required: bool) -> Any:
        return parse_json(await read_body(request, self.body_bytes_max), what, required)

    # ---- the operations ------------------------------------------------------------------------------------

    async def get_entry(self, request: Request, caller: Caller) -> Response:
        map_name, key = request.path_params["map"], request.path_params["key"]
        entry = await self.client.get_entry(map_name, key)
        if entry is None:
            raise NotFound(f"{map_name}[{key!r}] does not exist")
        value, version = entry
        return json_response({"key": key, "value": to_json(value), "version": version}, headers={"ETag": f'"{version}"'})

    async def put_entry(self, request: Request, caller: Caller) -> Response:
        map_name, key = request.path_params["map"], request.path_params["key"]
        require_write(caller, f"PUT {map_name}")
        self.space.map_def(map_name)  # an unknown map is a 404 before the body is read
        expected = expected_version(request)
        value = await self.body(request, "the value", required=True)
        op_id = op_id_of(request, caller)
        request.state.write = True
        if value is None:
            raise RequestError("null can't be stored as a value: DELETE the key instead")
        version = await self.client.put(map_name, key, value, expected_version=expected, op_id=op_id)
        return json_response({"version": version}, headers={"ETag": f'"{version}"'})

    async def delete_entry(self, request: Request, caller: Caller) -> Response:
        map_name, key = request.path_params["map"], request.path_params["key"]
        require_write(caller, f"DELETE {map_name}")
        expected = expected_version(request)
        op_id = op_id_of(request, caller)
        request.state.write = True
        deleted = await self.client.delete(map_name, key, expected_version=expected, op_id=op_id)
        return json_response({"deleted": deleted})

    async def get_backup(self, request: Request, caller: Caller) -> Response:
        map_name, key = request.path_params["map"], request.path_params["key"]
        read = await self.client.get_from_backup(map_name, key)
        return json_response({"key": key, "value": to_json(read.value), "version": read.version,
                              "lag_records": read.lag_records, "lag_s": read.lag_s})

    async def execute(self, request: Request, caller: Caller) -> Response:
        name, key = request.path_params["handler"], request.path_params["key"]
        definition = self.space.handler_def(name)
        if not definition.read_only:
            require_write(caller, f"handler {name}")
        args = await self.body(request, "the handler's arguments", required=False)
        op_id = None if definition.read_only else op_id_of(request, caller)
        request.state.write = not definition.read_only
        return json_response({"result": to_json(await self.client.execute(name, key, args, op_id=op_id))})

    async def query(self, request: Request, caller: Caller) -> Response:
        name = request.path_params["query"]
        self.space.query_def(name)
        args = await self.body(request, "the query's arguments", required=False)
        return json_response({"result": to_json(await self.client.query(name, args))})

    # ---- no token --------------------------------------------------------------------------------------------

    async def openapi_json(self, _: Request) -> Response:
        return Response(self.document_json, media_type="application/json")

    async def docs(self, _: Request) -> Response:
        return HTMLResponse(openapi.docs_html(self.document))

    async def health(self, _: Request) -> Response:
        return json_response({"ok": True, "space": self.space.name, "table_version": self.client.table.version})


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (no such method there), in the one error body."""
    assert isinstance(exc, HTTPException)
    error, code = {404: ("NotFound", "not_found"), 405: ("MethodNotAllowed", "method_not_allowed")}.get(
        exc.status_code, ("HTTPError", "http"))
    return json_response({"error": error, "code": code, "message": f"{request.method} {request.url.path}: "
                          f"{exc.detail}", "retry": RETRY_NO}, exc.status_code, dict(exc.headers or {}))


CONDITIONAL: Final = frozenset({"expected_version"})  # the query parameters of a put and a delete


def build_app(gateway: Gateway, extra_routes: list[Route] | None = None) -> Starlette:
    """The gateway's routes (keys may hold '/': the key is the rest of the path)."""
    g, e = gateway, gateway.endpoint
    routes = [
        Route("/maps/{map}/entries/{key:path}", e(g.get_entry), methods=["GET"]),
        Route("/maps/{map}/entries/{key:path}", e(g.put_entry, CONDITIONAL), methods=["PUT"]),
        Route("/maps/{map}/entries/{key:path}", e(g.delete_entry, CONDITIONAL), methods=["DELETE"]),
        Route("/maps/{map}/backups/{key:path}", e(g.get_backup), methods=["GET"]),
        Route("/handlers/{handler}/{key:path}", e(g.execute), methods=["POST"]),
        Route("/queries/{query}", e(g.query), methods=["POST"]),
        Route("/maps/{map}/changes", e(g.streams.changes, frozenset({"key", "from"})), methods=["GET"]),
        *(extra_routes or []),
        Route("/openapi.json", g.openapi_json, methods=["GET"]),
        Route("/docs", g.docs, methods=["GET"]),
        Route("/healthz", g.health, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
