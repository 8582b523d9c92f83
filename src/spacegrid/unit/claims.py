"""A PU's view of every partition's ownership claims (ADR 0009): what its appends are fenced on, and who took what."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from spacegrid.engine.changelog import Changelog
from spacegrid.errors import GridUnavailable

log = logging.getLogger("spacegrid.claims")


class ClaimView:
    """Follows the claims in the log. `seen_seq` is the newest claim applied: an append fenced on it succeeds only
    if no partition was claimed since, so a PU whose append succeeded had seen every claim of its partitions.
    `on_claimed(partition)` is called when another member claims a partition."""

    def __init__(self, changelog: Changelog, member_id: str, on_claimed: Callable[[int], None]) -> None:
        self.changelog = changelog
        self.member_id = member_id
        self.on_claimed = on_claimed
        self.seen_seq = 0
        self.last: dict[int, tuple[int, int, str]] = {}  # partition -> (seq, epoch, member) of its last claim
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._sub: Any = None

    async def start(self, timeout_s: float, retry_s: float) -> None:
        """Follow the claims, and return once every claim made before the call is applied (retrying while
        JetStream does not answer, as after a node's loss; GridUnavailable after timeout_s)."""
        deadline_s = time.monotonic() + timeout_s
        while True:
            try:
                if self._sub is None:
                    self._sub = await self.changelog.watch_claims(self._apply)
                last_seq = await self.changelog.last_sequence(self.changelog.names.claim_wildcard)
                break
            except Exception as exc:  # the engine's GridUnavailable, or a consumer that could not be created
                if time.monotonic() > deadline_s:
                    raise GridUnavailable(f"the claims could not be read within {timeout_s:g} s: {exc}") from exc
                log.info("claims not readable yet (%s); retrying", exc)
                await asyncio.sleep(retry_s)
        await self.wait_seen(last_seq, max(deadline_s - time.monotonic(), retry_s))

    async def restart(self, timeout_s: float, retry_s: float) -> None:
        """Follow the claims afresh from the log's start (a recreated log: the old subscription followed the deleted
        stream); returns once the claims made before the call, its reset marker included, are applied."""
        await self.stop()
        await self.start(timeout_s, retry_s)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    def claimed_away(self, partition: int, claim_seq: int) -> bool:
        """Another member claimed the partition after our claim at `claim_seq`."""
        last = self.last.get(partition)
        return last is not None and last[0] > claim_seq and last[2] != self.member_id

    async def wait_seen(self, seq: int, timeout_s: float) -> None:
        """Until the claim at `seq` (and every one before it) is applied; GridUnavailable after timeout_s."""
        if seq <= self.seen_seq:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, future))
        try:
            await asyncio.wait_for(future, timeout_s)
        except asyncio.TimeoutError:
            raise GridUnavailable(f"the claims did not reach seq {seq} within {timeout_s:g} s "
                                  f"(seen {self.seen_seq})") from None
        finally:
            self._waiters = [(s, f) for s, f in self._waiters if f is not future]

    def _apply(self, seq: int, partition: int, epoch: int, member: str) -> None:
        if seq <= self.seen_seq:
            return  # redelivered after the ordered consumer was reset
        self.seen_seq = seq
        if partition >= 0:
            previous = self.last.get(partition)
            if previous is not None and previous[1] > epoch:  # never written by a PU (claims compare-and-set)
                log.error("partition %d: claim at seq %d has epoch %d after epoch %d", partition, seq, epoch,
                          previous[1])
            self.last[partition] = (seq, epoch, member)
            if member != self.member_id:
                self.on_claimed(partition)
        ready = [future for wanted, future in self._waiters if wanted <= seq and not future.done()]
        for future in ready:
            future.set_result(None)
