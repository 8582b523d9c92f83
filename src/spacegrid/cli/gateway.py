"""`spacegrid gateway`: serve a space over HTTP/JSON with its OpenAPI document (docs/gateway.md)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import click

from spacegrid.cli.common import (access_options, app_option, connect_timeout_option, console, data_dir_option, fail,
                                  given_access, nats_option, open_client, resolve, run_until_interrupted)
from spacegrid.cli.console import _loopback
from spacegrid.errors import ConfigError, SpacegridError
from spacegrid.limits import GATEWAY_SSE_KEEPALIVE_S, GATEWAY_START_S, GATEWAY_STOP_S

GATEWAY_URL_PREFIX = "gateway: "


@click.command(name="gateway")
@data_dir_option
@nats_option
@app_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on. Beyond loopback, put TLS in front (a reverse proxy): tokens are bearer "
                   "secrets.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="0: a free port.")
@click.option("--token-key", "token_key", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="The key HTTP callers' tokens are checked with [default: DATA_DIR/secrets/gateway.key, made by "
                   "`spacegrid auth token`].")
@click.option("--no-auth", is_flag=True, help="Take requests without a token, every caller a writer: loopback "
                                              "development only (refused with another --host).")
@click.option("--keepalive-s", "keepalive_s", type=click.FloatRange(0.1, 3600), default=GATEWAY_SSE_KEEPALIVE_S,
              show_default=True, help="An idle change feed (server-sent events) sends a comment this often, so that "
                                      "proxies and load balancers do not close it.")
@connect_timeout_option
@access_options
def gateway_command(data_dir: Path, nats_url: str | None, app: str | None, host: str, port: int,
                    token_key: Path | None, no_auth: bool, keepalive_s: float, connect_timeout_s: float) -> None:
    """Serve the space's maps, handlers and queries over HTTP/JSON: /openapi.json describes them, /docs lists them.
    Connects to NATS with the client role's credential; HTTP callers send `Authorization: Bearer TOKEN`, minted by
    `spacegrid auth token reader|client`. Prints its URL, then serves until Ctrl-C."""
    import uvicorn

    from spacegrid.gateway.app import Gateway, build_app
    from spacegrid.gateway.auth import TokenVerifier, key_path, read_key

    url, space = resolve(data_dir, nats_url, app)
    access = given_access(data_dir, "client")
    if no_auth and not _loopback(host):
        fail(f"--no-auth serves anyone who reaches {host} as a writer: only on loopback")
    if not _loopback(host):
        console.print(f"[yellow]the gateway serves on {host}: put TLS in front of it, bearer tokens are secrets[/yellow]")
    try:
        verifier = None if no_auth else TokenVerifier(read_key(token_key or key_path(data_dir)))
    except ConfigError as exc:
        fail(str(exc))
    if no_auth:
        console.print("[bold red]NO AUTH[/bold red]: every caller of the gateway may read and write")

    async def run() -> None:
        client = await open_client(space, url, connect_timeout_s, access)
        try:
            gateway = Gateway(client, verifier, _version(), keepalive_s=keepalive_s)
            server = uvicorn.Server(uvicorn.Config(build_app(gateway), host=host, port=port, log_level="warning",
                                                   lifespan="off", timeout_graceful_shutdown=int(GATEWAY_STOP_S)))
            serving = asyncio.create_task(server.serve())
            deadline_s = time.monotonic() + GATEWAY_START_S
            while not server.started:  # uvicorn offers no event for it
                if serving.done() or time.monotonic() > deadline_s:
                    raise SpacegridError(f"the gateway could not serve on {host}:{port}")
                await asyncio.sleep(0.05)
            bound = server.servers[0].sockets[0].getsockname()
            shown = f"[{host}]" if ":" in host else host
            print(f"{GATEWAY_URL_PREFIX}http://{shown}:{bound[1]}/", flush=True)
            await serving
        finally:
            await client.close()

    run_until_interrupted(run(), failures=(ValueError,))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spacegrid")
    except PackageNotFoundError:
        return "0"
