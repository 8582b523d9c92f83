"""`spacegrid listen MAP`: a map's committed changes from the change feed (ADR 0012), as lines or JSON lines, from
now, from the oldest kept, or after a position printed earlier."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from spacegrid.cli.common import (access_options, app_option, connect_timeout_option, data_dir_option, given_access,
                                  nats_option, open_client, resolve, run_until_interrupted)

KIND_STYLE = {"put": "green", "delete": "red", "expire": "yellow"}


@click.command()
@click.argument("map_name", metavar="MAP")
@click.option("--key", default=None, help="Only this key's changes.")
@click.option("--from", "from_", default=None, metavar="POSITION",
              help="After this position (as printed), or 'earliest' (the oldest the log keeps) [default: from now].")
@click.option("--limit", type=click.IntRange(1), default=None, help="Stop after this many changes.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (its position included).")
@data_dir_option
@nats_option
@app_option
@connect_timeout_option
@access_options
def listen(map_name: str, key: str | None, from_: str | None, limit: int | None, as_json: bool, data_dir: Path,
           nats_url: str | None, app: str | None, connect_timeout_s: float) -> None:
    """Print the committed changes of MAP as they happen (Ctrl-C ends): put, delete, expire, with key, version and
    the position to resume after (`--from POSITION`). Read from the replicated log: nothing committed is missed,
    across PU failovers; a position the log no longer holds (trimmed behind the store) is an error, never a gap."""
    url, space = resolve(data_dir, nats_url, app)
    access = given_access(data_dir, "client")
    out = Console(highlight=False, soft_wrap=True)

    async def run() -> None:
        from spacegrid.gateway.values import to_json

        client = await open_client(space, url, connect_timeout_s, access)
        shown = 0
        try:
            async for change in client.listen(map_name, key, from_=from_):
                value = to_json(change.value)
                if as_json:
                    print(json.dumps({"position": str(change.position), "kind": change.kind, "key": change.key,
                                      "value": value, "version": change.version, "partition": change.partition},
                                     separators=(",", ":")), flush=True)
                else:
                    style = KIND_STYLE.get(change.kind, "default")
                    shown_value = "" if change.kind != "put" else " " + json.dumps(value, separators=(",", ":"))
                    out.print(f"{change.position}  [{style}]{change.kind:<6}[/{style}] {escape(change.key)} "
                              f"v{change.version}{escape(shown_value)}")
                shown += 1
                if limit is not None and shown >= limit:
                    return
        finally:
            await client.close()

    run_until_interrupted(run())
