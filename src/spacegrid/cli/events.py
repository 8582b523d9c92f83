"""`spacegrid events`: the grid's events timeline (joins, leaves, members declared dead, tables and moves, failovers
with how long they took, fences, store outages, a missing log), from the events stream, as a table or JSON lines."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from spacegrid.cli.common import (access_options, app_option, connect_timeout_option, data_dir_option,
                                  given_access, nats_option, open_transport, resolve, run_until_interrupted)

EVENTS_IDLE_S = 0.5  # without --follow: stop once no event came for this long after the last one kept
DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
SECONDS_PER = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
STYLE = {"member_dead": "red", "partition_poisoned": "red", "log_missing": "red", "records_refused": "red",
         "claim_refused": "red", "store_unavailable": "yellow", "fenced": "yellow", "partition_recovered": "green",
         "store_available": "green", "log_restored": "green"}
COMMON_FIELDS = ("at", "kind", "member")


def parse_since(text: str | None) -> float | None:
    """`--since 10m` (s, m, h, d ago) as a Unix time; None for all that is kept."""
    if text is None:
        return None
    match = DURATION.match(text.strip())
    if match is None:
        raise click.BadParameter(f"{text!r} is not a duration: use e.g. 30s, 10m, 2h or 1d")
    return time.time() - float(match.group(1)) * SECONDS_PER[match.group(2)]


def describe(event: dict[str, Any]) -> str:
    """The event's details as `name=value` pairs, in the order it holds them."""
    return " ".join(f"{name}={json.dumps(value, separators=(',', ':'))}" for name, value in event.items()
                    if name not in COMMON_FIELDS)


@click.command()
@data_dir_option
@nats_option
@app_option
@click.option("--since", default=None, help="Only events from this long ago on: 30s, 10m, 2h, 1d (default: all kept).")
@click.option("--kind", "kinds", multiple=True, help="Only events of this kind (repeatable): member_dead, table, ...")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they come (Ctrl-C ends).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Stop after this many events.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@connect_timeout_option
@access_options
def events(data_dir: Path, nats_url: str | None, app: str | None, since: str | None, kinds: tuple[str, ...],
           follow: bool, limit: int | None, as_json: bool, connect_timeout_s: float) -> None:
    """The grid's events, oldest first: members joining, leaving or declared dead, partition tables and the
    partitions they moved, failovers and moves with how long each partition took to serve again, fences, store
    outages, the log missing, refused log records. Kept in the stream SG_<space>_events (7 days, 100,000 events)."""
    url, space = resolve(data_dir, nats_url, app)
    access = given_access(data_dir, "reader")
    since_s = parse_since(since)
    out = Console(highlight=False, soft_wrap=True)

    async def run() -> None:
        from spacegrid.engine.subjects import Names

        transport = await open_transport(url, "spacegrid-events", access, connect_timeout_s)
        shown = 0
        try:
            async for event in transport.read_events(Names(space.name), since_s, follow, EVENTS_IDLE_S):
                if kinds and event.get("kind") not in kinds:
                    continue
                if as_json:
                    print(json.dumps(event, separators=(",", ":")), flush=True)
                else:
                    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(event.get("at", 0))))
                    kind = str(event.get("kind"))
                    style = STYLE.get(kind, "default")
                    out.print(f"{at}  [{style}]{kind:<20}[/{style}] {escape(str(event.get('member')))}  "
                              f"{escape(describe(event))}")
                shown += 1
                if limit is not None and shown >= limit:
                    return
        finally:
            await transport.close()
        if shown == 0 and not as_json:
            out.print("no events" + (f" since {since}" if since else ""))

    run_until_interrupted(run())
