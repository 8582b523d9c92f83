"""`spacegrid repair`: partitions stopped by a log message they can't apply; show the message; quarantine it to the
dead-letter subject with the decision (who, when, why) kept next to it; recreate a deleted log stream."""

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
from rich.markup import escape
from rich.table import Table

from spacegrid.cli.common import (access_options, app_option, connect_timeout_option, data_dir_option, fail,
                                  given_access, nats_option, open_transport, print_json, resolve)
from spacegrid.errors import SpacegridError

PREVIEW_BYTES = 64  # of a message that does not decode, shown as hex
RECREATE_POLL_S = 0.5  # --recreate-log reads the PUs' member records this often while it waits for them


@click.command()
@data_dir_option
@nats_option
@app_option
@click.option("--seq", type=click.IntRange(1), default=None, help="The log message to show (or quarantine).")
@click.option("--quarantine", is_flag=True, help="Move message --seq to the dead-letter subject sg.<space>.log.dead "
                                                 "and delete it from the log; the stopped partitions then recover.")
@click.option("--reason", default=None, help="Why (required with --quarantine; kept with the dead letter).")
@click.option("--recreate-log", is_flag=True,
              help="Recreate the space's log stream after it was deleted: waits until every PU has seen it missing "
                   "and the store holds their acknowledged writes, then recreates it; the PUs append again.")
@click.option("--accept-data-loss", is_flag=True,
              help="With --recreate-log: recreate it even where that loses acknowledged writes (no PU running, or no "
                   "store); what is lost is printed.")
@click.option("--wait-s", type=click.FloatRange(0), default=60.0, show_default=True,
              help="With --recreate-log: how long to wait for the PUs to be ready.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@connect_timeout_option
@access_options
def repair(data_dir: Path, nats_url: str | None, app: str | None, seq: int | None, quarantine: bool,
           reason: str | None, recreate_log: bool, accept_data_loss: bool, wait_s: float, as_json: bool,
           connect_timeout_s: float) -> None:
    """Without --seq: the partitions stopped by a poisoned log message, by PU. With --seq N: that message, decoded
    as far as it goes. With --seq N --quarantine --reason TEXT: move it out of the log (admin credential). What a
    quarantined message held is lost to the grid; its bytes stay in the dead-letter subject. With --recreate-log:
    recreate a deleted log stream (admin credential)."""
    if quarantine and (seq is None or not reason):
        fail("--quarantine needs --seq N (the message) and --reason TEXT (kept with it)")
    if recreate_log and (seq is not None or quarantine):
        fail("--recreate-log goes alone: it does not take --seq or --quarantine")
    url, space = resolve(data_dir, nats_url, app)
    access = given_access(data_dir, "admin")

    async def run() -> Any:
        from spacegrid.engine.subjects import Names

        transport = await open_transport(url, "spacegrid-repair", access, connect_timeout_s)
        try:
            names = Names(space.name)
            if recreate_log:
                return await _recreate_log(transport, names, space, data_dir, accept_data_loss, wait_s,
                                           connect_timeout_s)
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
    elif recreate_log:
        out = Console()
        out.print(f"recreated the log stream {result['recreated']} from sequence {result['first_seq']}; "
                  f"PUs {', '.join(result['members']) or '(none running)'} append again")
        for loss in result["losses"]:
            out.print(f"[red]data loss accepted:[/red] {escape(loss)}")
    elif seq is None:
        _print_stopped(result)
    else:
        Console().print_json(json.dumps(result, default=str))


async def _recreate_log(transport: Any, names: Any, space: Any, data_dir: Path, accept_data_loss: bool,
                        wait_s: float, timeout_s: float) -> dict[str, Any]:
    """Wait (at most `wait_s`) until recreating the log loses nothing, or the loss is accepted; then recreate it."""
    from spacegrid.config import NO_STORE, GridConfig
    from spacegrid.errors import ConfigError, GridUnavailable
    from spacegrid.limits import DEFAULT_LIMITS
    from spacegrid.relog import plan

    coordination = await transport.coordination(names)
    wire, _ = await coordination.read_config()
    config = None if wire is None else GridConfig.from_wire(wire)
    has_store = config is not None and config.store != NO_STORE
    exists = await transport.changelog(names, "repair", timeout_s).stream_exists()
    if exists is None:
        raise GridUnavailable("JetStream did not answer whether the log stream exists: try again")
    if exists:
        raise ConfigError(f"the log stream {names.stream} exists: nothing to recreate")
    store_seq = await _store_seq(config, space, data_dir) if has_store else 0
    deadline_s = time.monotonic() + wait_s
    with Console(stderr=True).status("waiting until every PU has seen the log missing and the store holds their "
                                     "acknowledged writes") as status:
        while True:
            members = await coordination.read_members()
            chosen = plan(members, has_store, store_seq, accept_data_loss)
            if chosen.ready:
                break
            if time.monotonic() > deadline_s:
                raise ConfigError(f"the PUs were not ready within {wait_s:g} s: {'; '.join(chosen.waiting_for)}. "
                                  "A PU that does not reach the store can't flush: see docs/runbooks/store-outage.md")
            status.update(f"waiting for {'; '.join(chosen.waiting_for)}")
            await asyncio.sleep(RECREATE_POLL_S)
    marker_seq = await transport.recreate_stream(names, 1 if config is None else config.replicas,
                                                 2 * DEFAULT_LIMITS.append_bytes_max, chosen.first_seq)
    return {"recreated": names.stream, "first_seq": chosen.first_seq, "marker_seq": marker_seq,
            "members": sorted(members), "losses": list(chosen.losses)}


async def _store_seq(config: Any, space: Any, data_dir: Path) -> int:
    """The highest log position the store keeps for any partition (the recreated log starts above it)."""
    from spacegrid.config import read_store_password, with_store_password
    from spacegrid.store import open_store

    store = open_store(with_store_password(config.store, read_store_password(None, data_dir)), space.name,
                       list(space.maps))
    await store.open()
    try:
        return max([(await store.progress(p)).seq for p in range(space.partitions)], default=0)
    finally:
        await store.close()


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
            described[str(partition)] = codec.decode_opaque(part, DEFAULT_LIMITS.append_bytes_max)
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
