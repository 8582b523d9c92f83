"""`spacegrid repair`: partitions stopped by a log message they can't apply; show the message; quarantine it to the
dead-letter subject with the decision (who, when, why) kept next to it."""

from __future__ import annotations

import asyncio
import getpass
import json
import socket
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from spacegrid.cli.common import (access_options, app_option, connect_timeout_option, data_dir_option, fail,
                                  given_access, nats_option, print_json, resolve, within_connect_bound)
from spacegrid.errors import SpacegridError

PREVIEW_BYTES = 64  # of a message that does not decode, shown as hex


@click.command()
@data_dir_option
@nats_option
@app_option
@click.option("--seq", type=click.IntRange(1), default=None, help="The log message to show (or quarantine).")
@click.option("--quarantine", is_flag=True, help="Move message --seq to the dead-letter subject sg.<space>.log.dead "
                                                 "and delete it from the log; the stopped partitions then recover.")
@click.option("--reason", default=None, help="Why (required with --quarantine; kept with the dead letter).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@connect_timeout_option
@access_options
def repair(data_dir: Path, nats_url: str | None, app: str | None, seq: int | None, quarantine: bool,
           reason: str | None, as_json: bool, connect_timeout_s: float) -> None:
    """Without --seq: the partitions stopped by a poisoned log message, by PU. With --seq N: that message, decoded
    as far as it goes. With --seq N --quarantine --reason TEXT: move it out of the log (admin credential). What a
    quarantined message held is lost to the grid; its bytes stay in the dead-letter subject."""
    if quarantine and (seq is None or not reason):
        fail("--quarantine needs --seq N (the message) and --reason TEXT (kept with it)")
    url, space = resolve(data_dir, nats_url, app)
    access = given_access(data_dir, "admin")

    async def run() -> Any:
        from spacegrid.engine.subjects import Names
        from spacegrid.engine.transport import Transport

        transport = await within_connect_bound(
            Transport.connect(url, "spacegrid-repair", connect_timeout_s=connect_timeout_s, access=access), url,
            connect_timeout_s)
        try:
            names = Names(space.name)
            if seq is None:
                members = await (await transport.coordination(names)).read_members()
                return {member: info.get("poisoned", {}) for member, info in members.items()}
            changelog = transport.changelog(names, "repair", connect_timeout_s)
            if not quarantine:
                subject, data, headers = await changelog.read_message(seq)
                return {"seq": seq, "subject": subject, "bytes": len(data), "headers": headers,
                        "decoded": _describe(data)}
            decision = {"by": f"{getpass.getuser()}@{socket.gethostname()}",
                        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "reason": str(reason)}
            dead_seq = await changelog.quarantine(seq, decision)
            return {"quarantined": seq, "dead_letter_seq": dead_seq, "subject": names.dead_log_subject, **decision}
        finally:
            await transport.close()

    try:
        result = asyncio.run(run())
    except SpacegridError as exc:
        fail(str(exc))
    if as_json:
        print_json(result)
    elif seq is None:
        _print_stopped(result)
    else:
        Console().print_json(json.dumps(result, default=str))


def _describe(data: bytes) -> Any:
    """A PU log message decoded as far as it goes: its parts by partition, each part's records or why not."""
    from spacegrid import codec
    from spacegrid.core.logformat import parts_of
    from spacegrid.limits import DEFAULT_LIMITS

    try:
        parts = parts_of(codec.decode(data, 2 * DEFAULT_LIMITS.append_bytes_max))
    except Exception as exc:  # noqa: BLE001 - showing what is wrong is the point
        return {"error": f"{type(exc).__name__}: {exc}", "hex": data[:PREVIEW_BYTES].hex()}
    described: dict[str, Any] = {}
    for partition, part in parts:
        try:
            described[str(partition)] = codec.decode(part, DEFAULT_LIMITS.append_bytes_max)
        except Exception as exc:  # noqa: BLE001
            described[str(partition)] = {"error": f"{type(exc).__name__}: {exc}", "hex": part[:PREVIEW_BYTES].hex()}
    return described


def _print_stopped(stopped: dict[str, dict[str, Any]]) -> None:
    out = Console()
    rows = [(member, partition, info) for member, by_partition in sorted(stopped.items())
            for partition, info in sorted(by_partition.items(), key=lambda item: int(item[0]))]
    if not rows:
        out.print("no partition is stopped by a poisoned log message")
        return
    table = Table(title="partitions stopped by a log message they can't apply")
    for column in ("partition", "member", "seq", "subject", "attempts", "reason"):
        table.add_column(column, justify="right" if column in ("partition", "seq", "attempts") else "left")
    for member, partition, info in rows:
        table.add_row(partition, member, str(info.get("seq")), str(info.get("subject")), str(info.get("attempts")),
                      str(info.get("reason")))
    out.print(table)
    out.print("show one: spacegrid repair --seq N; move it out of the log: spacegrid repair --seq N --quarantine "
              "--reason TEXT")
