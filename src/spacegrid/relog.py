"""Recreating a deleted log stream (`spacegrid repair --recreate-log`): when it is safe, from which sequence, and
what an operator accepts to lose when it is not."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spacegrid.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Plan:
    """Recreate the log from `first_seq` (above every position the lost log reached, so positions only advance).
    `waiting_for` names the PUs not ready yet (they have not seen the log missing, or the store lacks some of their
    acknowledged writes): wait and plan again. `losses` says what is lost, when the operator accepted it."""

    first_seq: int
    waiting_for: tuple[str, ...]
    losses: tuple[str, ...]

    @property
    def ready(self) -> bool:
        return not self.waiting_for


def plan(members: dict[str, dict[str, Any]], has_store: bool, store_seq: int, accept_data_loss: bool) -> Plan:
    """From the PUs' member records (`log_missing`, `log_seq`, `write_behind_lag_records`, `store`) and the
    highest log position the store keeps. ConfigError, saying what to do, when recreating would lose acknowledged
    writes and `accept_data_loss` is not given."""
    losses: list[str] = []
    if not members:
        losses.append("no PU is running: acknowledged writes the store did not hold yet were only in the deleted "
                      "log" if has_store else "no PU is running and the grid has no store: every value is lost")
    elif not has_store:
        losses.append("the grid has no store: the PUs keep their values in memory, but the recreated log does not "
                      "hold them, so a PU lost from now on loses its partitions (they stop with a log gap)")
    if losses and not accept_data_loss:
        raise ConfigError(f"recreating the log would lose data: {losses[0]}. Pass --accept-data-loss to recreate it "
                          "anyway (say so to the grid's users), or restore the stream from a backup of nats-server's "
                          "JetStream directory instead")
    waiting_for = []
    for member_id, info in sorted(members.items()):
        if not info.get("log_missing"):
            waiting_for.append(f"{member_id} (has not seen the log missing yet)")
        elif has_store and int(info.get("write_behind_lag_records", 0)) > 0:
            waiting_for.append(f"{member_id} ({info['write_behind_lag_records']} writes not in the store yet)")
    first_seq = max([store_seq, *(int(info.get("log_seq", 0)) for info in members.values())]) + 1
    assert first_seq >= 1
    return Plan(first_seq, tuple(waiting_for), tuple(losses))
