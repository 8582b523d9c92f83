"""`spacegrid gateway` against a live grid (real nats-server and PU processes): each operation over HTTP, the error
body and its statuses, bearer tokens per role, and schemathesis's property-based tests of the generated OpenAPI
document against the running gateway."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from spacegrid.cli.console import stop_console
from spacegrid.gateway.auth import mint_token, read_key
from spacegrid.launcher import LocalGrid
from spacegrid.limits import GATEWAY_BODY_BYTES_MAX
from spacegrid.testing.apps import APP
from spacegrid.testing.fixtures import TEST_PU_ARGS

URL_WAIT_S = 30.0
KEEPALIVE_S = 0.3  # the gateway's --keepalive-s here: the idle-feed test sees keep-alives at once
SCHEMATHESIS_EXAMPLES = 8  # per operation (about 30 operations): the whole property run stays under a minute


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "spacegrid.cli.main", *args], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class Gateway:
    """A running `spacegrid gateway` and a token per role."""

    def __init__(self, grid: LocalGrid, url: str) -> None:
        self.grid, self.url = grid, url
        self.client_token = cli("auth", "token", "client", "--data-dir", str(grid.data_dir))
        self.reader_token = cli("auth", "token", "reader", "--data-dir", str(grid.data_dir))

    def http(self, token: str | None = "client") -> httpx.Client:
        """An HTTP client sending the token of role `token` (None: no token)."""
        chosen = {"client": self.client_token, "reader": self.reader_token}.get(token or "", token)
        headers = {"Authorization": f"Bearer {chosen}"} if chosen else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A grid of 2 PUs serving the test app, `spacegrid gateway` on it (a free port); all stopped after."""
    grid = LocalGrid(tmp_path_factory.mktemp("grid"), APP, pu_args=TEST_PU_ARGS)
    grid.start(2)
    try:
        grid.wait_ready(60, members=2)
        cli("auth", "token", "reader", "--data-dir", str(grid.data_dir))  # makes the gateway key before it starts
        process = subprocess.Popen([sys.executable, "-m", "spacegrid.cli.main", "gateway", "--data-dir",
                                    str(grid.data_dir), "--keepalive-s", str(KEEPALIVE_S)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline_s = time.monotonic() + URL_WAIT_S
            line = ""
            while not line.startswith("gateway: "):
                ready, _, _ = select.select([process.stdout], [], [], max(deadline_s - time.monotonic(), 0))
                assert ready and process.poll() is None, f"no gateway URL: {process.stderr.read() if process.stderr else ''}"
                line = process.stdout.readline() if process.stdout else ""
            yield Gateway(grid, line.split()[-1])
        finally:
            stop_console(process)  # type: ignore[arg-type]  # SIGTERM, bounded wait, then SIGKILL
    finally:
        grid.stop()


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) >= {"error", "code", "message", "retry"}, body
    return body


def test_put_get_delete_round_trip(gateway: Gateway) -> None:
    """A PUT stores a JSON value (bytes as {"$base64"}) under a key holding '/', GET returns it with its version
    and ETag, DELETE removes it and says whether it existed, and a GET after is a 404 NotFound."""
    value = {"x": [1, 2.5, "s", True, None], "raw": {"$base64": "AP8="}}
    with gateway.http() as http:
        put = http.put("/maps/kv/entries/dir%2Fa", json=value)
        assert put.status_code == 200, put.text
        version = put.json()["version"]
        got = http.get("/maps/kv/entries/dir%2Fa")
        assert got.json() == {"key": "dir/a", "value": value, "version": version}
        assert got.headers["etag"] == f'"{version}"'
        backup = http.get("/maps/kv/backups/dir%2Fa").json()
        assert backup["key"] == "dir/a" and backup["lag_records"] >= 0
        assert http.delete("/maps/kv/entries/dir%2Fa").json() == {"deleted": True}
        assert http.delete("/maps/kv/entries/dir%2Fa").json() == {"deleted": False}
        missing = http.get("/maps/kv/entries/dir%2Fa")
        assert missing.status_code == 404 and error_of(missing)["error"] == "NotFound"


def test_compare_and_set_conflict_is_409_with_the_current_version(gateway: Gateway) -> None:
    """PUT with expected_version=0 creates; again is a 409 VersionConflict naming the current version; with that
    version it succeeds, and a DELETE with a stale one is refused."""
    with gateway.http() as http:
        v1 = http.put("/maps/kv/entries/cas", params={"expected_version": 0}, json="first").json()["version"]
        conflict = http.put("/maps/kv/entries/cas", params={"expected_version": 0}, json="again")
        assert conflict.status_code == 409
        assert error_of(conflict) | {"message": ""} == {"error": "VersionConflict", "code": "conflict", "message": "",
                                                        "retry": "no", "current_version": v1}
        v2 = http.put("/maps/kv/entries/cas", params={"expected_version": v1}, json="second").json()["version"]
        assert http.delete("/maps/kv/entries/cas", params={"expected_version": v1}).status_code == 409
        assert http.delete("/maps/kv/entries/cas", params={"expected_version": v2}).json() == {"deleted": True}


def test_handlers_and_queries(gateway: Gateway) -> None:
    """POST /handlers/incr/KEY runs the handler on the owner with the body as its arguments; POST /queries/count
    merges every partition's count."""
    with gateway.http() as http:
        assert http.post("/handlers/incr/hits", json=5).json() == {"result": 5}
        assert http.post("/handlers/incr/hits").json() == {"result": 6}  # no body: args null
        assert http.put("/maps/counters/entries/other", json=1).status_code == 200
        assert http.post("/queries/count", json="counters").json() == {"result": 2}


def test_errors_map_to_statuses_and_the_gateway_keeps_serving(gateway: Gateway) -> None:
    """Each failure answers with the one error body and its status (a handler that raised 422 with exc_type,
    unknown names 404, bad JSON, null and a bad expected_version 400, a body over the bound 413, no route 404, a
    wrong method 405), and the gateway serves a request after all of them."""
    with gateway.http() as http:
        cases = [
            (http.post("/handlers/boom/b1"), 422, "HandlerError"),
            (http.post("/handlers/nope/k"), 404, "UnknownHandler"),
            (http.post("/queries/nope"), 404, "UnknownHandler"),
            (http.get("/maps/nope/entries/k"), 404, "UnknownMap"),
            (http.put("/maps/kv/entries/j", content=b"{not json"), 400, "DecodeError"),
            (http.put("/maps/kv/entries/j", content=b"NaN"), 400, "DecodeError"),
            (http.put("/maps/kv/entries/j", content=b"null"), 400, "RequestError"),
            (http.put("/maps/kv/entries/j", content=b"12345678901234567890123"), 400, "EncodeError"),
            (http.put("/maps/kv/entries/j", params={"expected_version": "-1"}, json=1), 400, "RequestError"),
            (http.put("/maps/kv/entries/j", content=b" " * (GATEWAY_BODY_BYTES_MAX + 1)), 413, "PayloadTooLarge"),
            (http.get("/nowhere"), 404, "NotFound"),
            (http.post("/maps/kv/entries/j"), 405, "MethodNotAllowed"),
        ]
        for response, status, error in cases:
            assert (response.status_code, error_of(response)["error"]) == (status, error), response.text
            assert error_of(response)["retry"] == "no"
        assert error_of(cases[0][0])["exc_type"] == "RuntimeError"
        assert http.get("/maps/kv/entries/j").status_code == 404  # the boom handler's write was discarded too
        assert http.get("/healthz").json()["ok"] is True


def test_tokens_per_role(gateway: Gateway) -> None:
    """No token is a 401 with WWW-Authenticate; a forged, foreign or expired token is a 401; a reader's token reads
    and queries but its PUT, DELETE and writing handler are 403 Forbidden, with nothing written."""
    path = "/maps/kv/entries/guarded"
    with gateway.http() as http:
        http.put(path, json="kept")
    with gateway.http(None) as anonymous:
        refused = anonymous.get(path)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        assert error_of(refused)["error"] == "Unauthorized"
    foreign = mint_token(b"k" * 32, "client", 0, time.time())
    expired = mint_token(read_key(gateway.grid.data_dir / "secrets" / "gateway.key"), "client", 1, time.time() - 10)
    forged = gateway.reader_token.replace(".reader.", ".client.")
    for token in (foreign, expired, forged, "sgt1.nonsense"):
        with gateway.http(token) as http:
            assert http.put(path, json="stolen").status_code == 401
    with gateway.http("reader") as reader:
        assert reader.get(path).json()["value"] == "kept"
        assert reader.post("/queries/count").status_code == 200
        for response in (reader.put(path, json="overwritten"), reader.delete(path), reader.post("/handlers/incr/r")):
            assert (response.status_code, error_of(response)["error"]) == (403, "Forbidden"), response.text
        assert reader.get(path).json()["value"] == "kept"
        assert reader.get("/maps/counters/entries/r").status_code == 404


def sse_events(lines: Iterator[str], count: int) -> list[tuple[str, dict[str, Any]]]:
    """The next `count` `change` events of a server-sent event stream's lines, as (id, data)."""
    events: list[tuple[str, dict[str, Any]]] = []
    event_id, kind = "", ""
    for line in lines:
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            assert kind == "change", line
            events.append((event_id, json.loads(line[6:])))
            if len(events) == count:
                return events
    raise AssertionError(f"the stream ended after {events}")


def test_the_change_feed_over_server_sent_events(gateway: Gateway) -> None:
    """GET /maps/kv/changes?key=K&from=earliest streams K's committed changes as `change` events whose id is the
    position; a reconnect with Last-Event-ID resumes right after that change; a change made while a stream is
    open arrives on it; an unknown map is a 404 and a bad position a 400 before any stream starts."""
    key = f"feed-{time.monotonic_ns()}"
    with gateway.http() as writer:
        versions = [writer.put(f"/maps/kv/entries/{key}", json={"n": n}).json()["version"] for n in (1, 2)]
    with gateway.http("reader") as reader:
        with reader.stream("GET", "/maps/kv/changes", params={"key": key, "from": "earliest"}) as stream:
            assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
            first, second = sse_events(stream.iter_lines(), 2)
        assert [data["version"] for _, data in (first, second)] == versions
        assert first[1] | {"position": ""} == {"kind": "put", "map": "kv", "key": key, "value": {"n": 1},
                                               "version": versions[0], "partition": first[1]["partition"],
                                               "position": ""}
        assert first[0] == first[1]["position"]
        with reader.stream("GET", "/maps/kv/changes", params={"key": key},
                           headers={"Last-Event-ID": first[0]}) as stream:
            lines = stream.iter_lines()
            assert sse_events(lines, 1)[0][1]["version"] == versions[1]
            with gateway.http() as writer:
                writer.delete(f"/maps/kv/entries/{key}")
            deleted = sse_events(lines, 1)[0][1]
            assert (deleted["kind"], deleted["value"]) == ("delete", None)
        assert reader.get("/maps/nope/changes").status_code == 404
        assert error_of(reader.get("/maps/kv/changes", params={"from": "x.y"}))["error"] == "RequestError"


def test_a_write_repeated_with_its_idempotency_key_applies_once(gateway: Gateway) -> None:
    """A handler call and a put sent twice with one Idempotency-Key (a retry after a lost response) apply once and
    answer the first result both times; without the key, or with the same key under another token, the call is a
    new operation; a malformed key is a 400 and applies nothing, as is a misspelt query parameter (a put with
    `expected_verison` must not become an unconditional write)."""
    counter = f"idem-{time.monotonic_ns()}"
    other_token = cli("auth", "token", "client", "--data-dir", str(gateway.grid.data_dir))
    with gateway.http() as http, gateway.http(other_token) as other:
        once = {"Idempotency-Key": f"order-{counter}"}
        results = [http.post(f"/handlers/incr/{counter}", json=5, headers=once).json()["result"] for _ in range(2)]
        assert results == [5, 5]
        assert http.post(f"/handlers/incr/{counter}", json=5).json()["result"] == 10
        assert other.post(f"/handlers/incr/{counter}", json=5, headers=once).json()["result"] == 15
        bad = http.post(f"/handlers/incr/{counter}", json=5, headers={"Idempotency-Key": "has space"})
        assert (bad.status_code, error_of(bad)["error"]) == (400, "RequestError")
        assert http.get(f"/maps/counters/entries/{counter}").json()["value"] == 15
        put_once = {"Idempotency-Key": f"put-{counter}"}
        versions = [http.put(f"/maps/kv/entries/{counter}", json=n, headers=put_once).json()["version"] for n in (1, 2)]
        assert versions[0] == versions[1]
        assert http.get(f"/maps/kv/entries/{counter}").json() == {"key": counter, "value": 1, "version": versions[0]}
        typo = http.put(f"/maps/kv/entries/{counter}", json=3, params={"expected_verison": 0})
        assert (typo.status_code, error_of(typo)["error"]) == (400, "RequestError")
        assert http.get(f"/maps/kv/entries/{counter}").json()["value"] == 1


def test_an_idle_change_feed_sends_keep_alives_and_then_the_change(gateway: Gateway) -> None:
    """A change feed with nothing to send writes an SSE comment every --keepalive-s (so proxies keep it open); the
    change made after the keep-alives still arrives on the same stream."""
    key = f"idle-{time.monotonic_ns()}"
    with gateway.http("reader") as reader:
        with reader.stream("GET", "/maps/kv/changes", params={"key": key}) as stream:
            lines = stream.iter_lines()
            keepalives = 0
            for line in lines:  # bounded by the client's read timeout: keep-alives come every KEEPALIVE_S
                keepalives += line == ": keep-alive"
                if keepalives == 2:
                    break
            assert keepalives == 2
            with gateway.http() as writer:
                version = writer.put(f"/maps/kv/entries/{key}", json="after").json()["version"]
            assert sse_events(lines, 1)[0][1]["version"] == version


def test_the_openapi_document_describes_the_space(gateway: Gateway) -> None:
    """/openapi.json (no token needed) has a path per map, handler and query of the space, each operation with the
    role it needs, and /docs lists them."""
    with gateway.http(None) as http:
        document = http.get("/openapi.json").json()
        docs = http.get("/docs").text
    space = gateway.grid.space
    assert document["openapi"].startswith("3.")
    for name in space.maps:
        assert {"get", "put", "delete"} <= set(document["paths"][f"/maps/{name}/entries/{{key}}"])
    for name in space.handlers:
        assert document["paths"][f"/handlers/{name}/{{key}}"]["post"]["x-spacegrid-role"] == "client"
        assert f"/handlers/{name}/{{key}}" in docs
    for name in space.queries:
        assert document["paths"][f"/queries/{name}"]["post"]["x-spacegrid-role"] == "reader"


def test_generated_requests_conform_to_the_document(gateway: Gateway) -> None:
    """Requests schemathesis generates from the live gateway's OpenAPI document, valid ones and invalid ones (keys,
    values, arguments, expected versions), never get a 5xx, and every answer conforms to the document (status,
    content type, body schema). (schemathesis's pytest plugin, from_fixture, does not run on pytest 9: each operation
    is driven through its hypothesis strategy here instead.)"""
    schema = schemathesis.openapi.from_url(f"{gateway.url}openapi.json")
    headers = {"Authorization": f"Bearer {gateway.client_token}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20
    for operation in operations:
        if operation.path == "/handlers/spin/{key}" or operation.path.endswith("/changes"):
            continue  # spin runs until its time limit (slow, says nothing new); a change feed never ends
        # a handler's or a query's arguments are the app's (the document says any JSON): valid JSON may be refused
        excluded = [positive_data_acceptance] if operation.path.startswith(("/handlers/", "/queries/")) else []
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=SCHEMATHESIS_EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def conforms(case: Any) -> None:
                case.call_and_validate(base_url=gateway.url.rstrip("/"), headers=headers, excluded_checks=excluded)

            try:
                conforms()
            except Unsatisfiable:  # nothing invalid to send (no parameter, any JSON body): the valid ones ran
                assert mode is GenerationMode.NEGATIVE, operation.label
