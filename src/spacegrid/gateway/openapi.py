"""The gateway's OpenAPI 3.1 document, generated from a space's maps, handlers and queries, and a plain docs page of it."""

from __future__ import annotations

import html
import inspect
from typing import Any, Final

from spacegrid.gateway.changes import POSITION_PATTERN
from spacegrid.gateway.idempotency import IDEMPOTENCY_KEY_PATTERN
from spacegrid.gateway.statuses import RETRY_NO, RETRY_SAFE, RETRY_UNKNOWN, STATUS_MEANINGS
from spacegrid.limits import KEY_CHARS_MAX
from spacegrid.space import Space

OPENAPI_VERSION: Final = "3.1.0"
ERROR_REF: Final = {"$ref": "#/components/schemas/Error"}
ANY_JSON: Final = {"$ref": "#/components/schemas/Value"}
VALUE: Final = {  # what msgpack holds: integers of 64 bits, floats, strings, booleans, null, arrays, objects
    "description": 'A value as JSON: integers from -2^63 to 2^64-1; bytes are {"$base64": "..."}',
    "anyOf": [{"type": "integer", "minimum": -(2**63), "maximum": 2**64 - 1},
              {"type": "number", "not": {"type": "integer"}},
              {"type": ["string", "boolean", "null"]},
              {"type": "array", "items": {"$ref": "#/components/schemas/Value"}},
              {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Value"}}]}
NOT_NULL: Final = {"allOf": [ANY_JSON, {"not": {"type": "null"}}]}
READ_ERRORS: Final = (400, 401, 404, 413, 429, 500, 502, 503, 504)
WRITE_ERRORS: Final = (*READ_ERRORS, 403, 409)
CODE_ERRORS: Final = (*READ_ERRORS, 422)  # a handler or a query may raise
WRITING_CODE_ERRORS: Final = (*CODE_ERRORS, 403)
ROLE_KEY: Final = "x-spacegrid-role"  # the least role an operation needs: reader or client


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _operation(operation_id: str, summary: str, tag: str, role: str, ok: dict[str, Any],
               errors: tuple[int, ...], **extra: Any) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": ok}
    responses.update({str(status): {"$ref": f"#/components/responses/E{status}"} for status in sorted(errors)})
    return {"operationId": operation_id, "summary": summary, "tags": [tag], ROLE_KEY: role, "responses": responses,
            **extra}


def _body(description: str, required: bool) -> dict[str, Any]:
    schema = NOT_NULL if required else ANY_JSON
    return {"required": required, "description": description, "content": {"application/json": {"schema": schema}}}


def _doc(fn: Any, fallback: str) -> str:
    text = inspect.getdoc(fn) or ""
    return text or fallback


def _map_paths(name: str) -> dict[str, Any]:
    key = {"$ref": "#/components/parameters/Key"}
    expected = {"$ref": "#/components/parameters/ExpectedVersion"}
    idempotency = {"$ref": "#/components/parameters/IdempotencyKey"}
    paths: dict[str, Any] = {
        f"/maps/{name}/entries/{{key}}": {
            "parameters": [key],
            "get": _operation(f"get_entry_{name}", f"Read an entry of {name}, with its version", name, "reader",
                              _json(_ref("Entry"), "The entry (ETag: its version)"), READ_ERRORS),
            "put": _operation(f"put_entry_{name}", f"Store an entry of {name} (compare-and-set with expected_version)",
                              name, "client", _json(_ref("Written"), "Stored: its new version"), WRITE_ERRORS,
                              parameters=[expected, idempotency], requestBody=_body("The value (not null)", True)),
            "delete": _operation(f"delete_entry_{name}", f"Delete an entry of {name}", name, "client",
                                 _json(_ref("Deleted"), "Whether the entry existed"), WRITE_ERRORS,
                                 parameters=[expected, idempotency]),
        },
        f"/maps/{name}/backups/{{key}}": {
            "parameters": [key],
            "get": _operation(f"get_backup_{name}", f"Read an entry of {name} from a hot backup (may lag)", name,
                              "reader", _json(_ref("BackupEntry"), "The backup's value and version (null where it "
                                                                   "has none) and its lag"), READ_ERRORS),
        },
    }
    paths[f"/maps/{name}/changes"] = {"get": _operation(
        f"changes_{name}", f"Follow the committed changes of {name} (server-sent events)", name, "reader",
        {"description": "A stream of `change` events: data is a Change, id its position (resume with "
                        "Last-Event-ID or from)", "content": {"text/event-stream": {"schema": _ref("Change")}}},
        READ_ERRORS, parameters=[{"$ref": "#/components/parameters/ChangeKey"},
                                 {"$ref": "#/components/parameters/From"}])}
    return paths


def _components() -> dict[str, Any]:
    version = {"type": "integer", "minimum": 0}
    return {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description":
                                       "A token of `spacegrid auth token reader|client`: reader reads, client also "
                                       "writes"}},
        "parameters": {
            "Key": {"name": "key", "in": "path", "required": True, "description": "The entry's key",
                    "schema": {"type": "string", "minLength": 1, "maxLength": KEY_CHARS_MAX,
                               "not": {"enum": [".", ".."]}}},  # URL dot segments: no path can name them
            "ExpectedVersion": {"name": "expected_version", "in": "query", "required": False, "schema": version,
                                "description": "Write only if the entry is at this version (0: absent)"},
            "IdempotencyKey": {"name": "Idempotency-Key", "in": "header", "required": False,
                               "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
                               "description": "A key of the caller's own, unique per operation: a write repeated "
                                              "with the same key (a retry after a timeout) is answered with the first "
                                              "one's result instead of applying again, while its partition's dedup "
                                              "window holds it (per token)"},
            "ChangeKey": {"name": "key", "in": "query", "required": False, "schema": {"type": "string"},
                          "description": "Only this key's changes"},
            "From": {"name": "from", "in": "query", "required": False,
                     "schema": {"type": "string", "pattern": POSITION_PATTERN},
                     "description": "Resume after this position (an event's id; 'earliest': from the oldest change "
                                    "the log holds); the Last-Event-ID header does the same. Absent: from now"},
        },
        "schemas": {
            "Value": VALUE,
            "Entry": {"type": "object", "required": ["key", "value", "version"],
                      "properties": {"key": {"type": "string"}, "value": ANY_JSON, "version": version}},
            "BackupEntry": {"type": "object", "required": ["key", "value", "version", "lag_records", "lag_s"],
                            "properties": {"key": {"type": "string"}, "value": ANY_JSON,
                                           "version": {"type": ["integer", "null"]},
                                           "lag_records": version, "lag_s": {"type": "number"}}},
            "Written": {"type": "object", "required": ["version"], "properties": {"version": version}},
            "Deleted": {"type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "boolean"}}},
            "Result": {"type": "object", "required": ["result"], "properties": {"result": ANY_JSON}},
            "Change": {"type": "object", "description": "One committed change, as Client.listen yields it"},
            "Error": {"type": "object", "required": ["error", "code", "message", "retry"], "properties": {
                "error": {"type": "string", "description": "The spacegrid.errors class"},
                "code": {"type": "string"}, "message": {"type": "string"},
                "retry": {"enum": [RETRY_SAFE, RETRY_NO, RETRY_UNKNOWN],
                          "description": "safe: nothing was applied; no: it fails the same way again; outcome "
                                         "unknown: a write may have been applied, read it back first"},
                "current_version": {"type": "integer", "description": "With 409: the entry's version"},
                "exc_type": {"type": "string", "description": "With 422: the exception the handler raised"}}},
        },
        "responses": {f"E{status}": _json(ERROR_REF, meaning) for status, meaning in STATUS_MEANINGS.items()},
    }


def build(space: Space, version: str) -> dict[str, Any]:
    """The OpenAPI document of a gateway serving `space` (with the change feed of each map)."""
    paths: dict[str, Any] = {"/healthz": {"get": {
        "operationId": "health", "summary": "Whether the gateway serves (no token needed)", "security": [],
        "tags": ["gateway"], "responses": {"200": _json({"type": "object"}, "The gateway serves this space")}}}}
    for name in space.maps:
        paths.update(_map_paths(name))
    for name, handler in space.handlers.items():
        role = "reader" if handler.read_only else "client"
        paths[f"/handlers/{name}/{{key}}"] = {"parameters": [{"$ref": "#/components/parameters/Key"}], "post": _operation(
            f"handler_{name}", f"Run handler {name} on the PU owning the key of {handler.map}", handler.map, role,
            _json(_ref("Result"), "What the handler returned"), CODE_ERRORS if handler.read_only else WRITING_CODE_ERRORS,
            description=_doc(handler.fn, f"Handler {name} of map {handler.map}") + ("\n\nRead-only." if
                                                                                     handler.read_only else ""),
            requestBody=_body("The handler's arguments (empty: null)", False),
            **({} if handler.read_only else {"parameters": [{"$ref": "#/components/parameters/IdempotencyKey"}]}))}
    for name, query in space.queries.items():
        paths[f"/queries/{name}"] = {"post": _operation(
            f"query_{name}", f"Run query {name} on every partition and merge the results", "queries", "reader",
            _json(_ref("Result"), "The merged result"), CODE_ERRORS, description=_doc(query.fn, f"Query {name}"),
            requestBody=_body("The query's arguments (empty: null)", False))}
    return {"openapi": OPENAPI_VERSION,
            "info": {"title": f"spacegrid gateway: space {space.name}", "version": version,
                     "description": f"The maps, handlers and queries of space {space.name!r} over HTTP/JSON. Errors "
                                    "have one body (Error); its `retry` says whether sending again is safe."},
            "security": [{"bearer": []}], "paths": paths, "components": _components()}


def docs_html(document: dict[str, Any]) -> str:
    """A self-contained page listing the document's operations (no script, nothing fetched from elsewhere)."""
    rows = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            rows.append(f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                        f"<td>{html.escape(operation.get(ROLE_KEY, 'none'))}</td>"
                        f"<td>{html.escape(operation['summary'])}<br><small>"
                        f"{html.escape(operation.get('description', ''))}</small></td></tr>")
    title = html.escape(document["info"]["title"])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>body{{font-family:sans-serif;"
            f"margin:2em}}td{{padding:.3em .8em;vertical-align:top;border-bottom:1px solid #ddd}}</style></head><body>"
            f"<h1>{title}</h1><p>{html.escape(document['info']['description'])} The machine-readable document: "
            f"<a href='openapi.json'>openapi.json</a>. Send <code>Authorization: Bearer TOKEN</code>.</p><table><tr>"
            f"<th>method</th><th>path</th><th>role</th><th>what</th></tr>{''.join(rows)}</table></body></html>")
